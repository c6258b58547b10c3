"""Multimodal Parallel Split Learning (MPSL) as a Flower strategy.

Fudala, Tsouvalas, Meratnia: "Fine-tuning Multimodal Transformers on Edge: A Parallel
Split Learning Approach" (arXiv 2502.06355). Clients keep only the modality tokenizers
(the head); the server holds the encoder and task head and trains them on the
*concatenated* activations of all clients with one forward and one backward pass per
step, so the server keeps no per-client model and the client computes only its head.

:meth:`MPSL.step` is one step in the paper's order; the legs it sends are in
:mod:`strategies.mpsl.legs` (their records, both halves side by side, in
:mod:`mpsl_flwr.protocol.mpsl`). At the end of each epoch the heads are averaged (FedAvg
weighted by samples seen), the pair [aggregated head; server model] is evaluated on the
test split, and, with ``head-sync=push``, the average is sent back to the clients with
their next batch.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

import torch
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from mpsl_flwr.checkpoint import Checkpointing
from mpsl_flwr.data.partition import client_batch_size
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.node_registry import NodeRegistry
from mpsl_flwr.optim import make_optimizer, make_scheduler, resolve_device
from mpsl_flwr.precision import autocast_dtype
from mpsl_flwr.progress import progress
from mpsl_flwr.protocol.transport import Exchange, MeteredGrid, TrafficMeter
from mpsl_flwr.records import EpochRecord, EpochStats
from mpsl_flwr.split_server import SplitServer
from mpsl_flwr.state import model_arrays
from strategies.base import require_grid
from strategies.discovery import ClientInfo, discover_clients, message_ttl
from strategies.mpsl import resume
from strategies.mpsl.legs import Legs
from strategies.mpsl.plan import StepPlan
from strategies.mpsl.roster import Roster
from strategies.mpsl.timing import StepTiming
from strategies.reporting import EpochEndFn, EvaluateFn, report_epoch

log = logging.getLogger("mpsl_flwr")


class MPSL:
    """Drives MPSL epochs and steps over a Flower :class:`Grid`.

    Parameters
    ----------
    exp : Experiment
        The run: config (batch size, epochs, timeouts, head-sync policy, ...), the model
        spec (the expected shape of every client's activations), data and evaluation.
        The initial head is pushed to every client before its first step; the per-epoch
        average is loaded into ``self.head``; body and tail (``self.server_model``) train
        here.
    """

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.cfg = exp.cfg
        self.head, self.server_model = exp.initial_model()
        self.device = resolve_device(self.cfg.server_device, "server-device")
        self.roster = Roster({}, self.head)
        self.meter = TrafficMeter()
        self._restore: dict[int, dict[str, object]] = {}  # cid -> state to hand back
        # One steps.jsonl row per step (strategies.mpsl.timing), until the runner takes them.
        self.step_times: list[dict[str, Any]] = []

    @property
    def clients(self) -> dict[int, ClientInfo]:
        """The logical clients of the run, by id (after discovery)."""
        return self.roster.clients

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def client_batch_size(self) -> int:
        """``b_n = ceil(B / N)`` over the N clients that hold data."""
        active = [c for c in self.clients.values() if c.num_examples > 0]
        return client_batch_size(self.cfg.batch_size, len(active))

    def steps_per_epoch(self) -> int:
        """Steps until the largest partition is exhausted."""
        b = self.client_batch_size()
        return max((math.ceil(c.num_examples / b) for c in self.clients.values()), default=0)

    # ------------------------------------------------------------------ run
    def start(
        self,
        grid: Grid | None,
        evaluate_fn: EvaluateFn | None = None,
        on_epoch_end: EpochEndFn | None = None,
        checkpointing: Checkpointing | None = None,
    ) -> Result:
        """Run ``epochs`` epochs; return the final arrays (head + server) and metrics.

        With ``checkpointing``, a checkpoint is written after every ``checkpoint-every``-th
        epoch, and ``resume=true`` continues after the last one.
        """
        self.grid = MeteredGrid(require_grid(grid, self.cfg.strategy))
        self.meter = self.grid.meter
        self.exchange = Exchange(self.grid)
        registry = NodeRegistry.from_config(self.cfg.node_registry)
        clients = discover_clients(self.grid, self.exchange, self.cfg, registry)
        self.roster = Roster(clients, self.head, registry)
        steps = self.steps_per_epoch()
        if steps == 0:
            raise RuntimeError("No client holds any training data.")
        optimizer = make_optimizer(self.server_model.parameters(), self.cfg.optim)
        scheduler = make_scheduler(optimizer, self.cfg.optim, steps * self.cfg.epochs)
        self.server = SplitServer(
            self.server_model,
            optimizer,
            scheduler,
            self.exp.task,
            self.device,
            autocast_dtype(self.cfg.server_precision, self.device),
        )
        self.legs = Legs(
            self.cfg,
            self.exchange,
            self.roster,
            self.head.stream_lengths(),
            self.exp.spec.width,
            self.meter,
        )
        first_epoch = 0
        if checkpointing is not None and checkpointing.resume:
            ckpt = checkpointing.load(num_clients=len(clients))
            first_epoch, self._restore = resume.restore(
                ckpt, self.server_model, self.head, optimizer, scheduler
            )
            if self.cfg.head_sync == "push":
                self.roster.push_head()
            else:
                self.roster.head_record = None  # clients continue with their restored heads
        log.info(
            "MPSL: global batch %d, %d per client, %d steps per epoch, %d epochs",
            self.cfg.batch_size,
            self.client_batch_size(),
            steps,
            self.cfg.epochs,
        )
        result = Result()
        for epoch in range(first_epoch, self.cfg.epochs):
            record = self.run_epoch(epoch, steps)
            self._require_finite(epoch)
            report_epoch(result, record, self.head, self.server_model, evaluate_fn, on_epoch_end)
            if checkpointing is not None:
                checkpointing.save_if_due(epoch + 1, functools.partial(self._checkpoint, epoch))
        result.arrays = model_arrays(self.head, self.server_model)
        return result

    def run_epoch(self, epoch: int, steps: int) -> EpochRecord:
        """Train one epoch, average the heads, and return the epoch's history row."""
        t0 = time.time()
        traffic0 = self.meter.totals()
        stats, plan = self.train_epoch(epoch, steps)
        trained = {cid: n for cid, n in plan.seen.items() if n > 0}
        heads = self.legs.heads(list(trained), f"e{epoch}head", stats)
        if not self.roster.average_heads(heads, trained):
            log.warning("No client head reached the server after epoch %d.", epoch + 1)
        if self.cfg.head_sync == "push":
            self.roster.push_head()
        mb = self.meter.mb_per_client(traffic0, len(self.clients))
        return EpochRecord.of_training(
            epoch + 1,
            self.exp.task,
            stats.loss,
            stats.accuracy,
            steps=stats.steps,
            mean_clients_per_step=stats.mean_clients_per_step,
            dropped_client_steps=stats.dropped,
            samples_trained=sum(trained.values()),
            mb_down_per_client=mb["mb-down-per-client"],
            mb_up_per_client=mb["mb-up-per-client"],
            epoch_time_s=round(time.time() - t0, 3),
        )

    def train_epoch(self, epoch: int, steps: int) -> tuple[EpochStats, StepPlan]:
        """One pass over every partition: ``steps`` MPSL steps, plus up to as many again
        while a client that missed steps (dropped, rejoined) and can be reached still has
        data left, so an epoch trains every reachable sample once."""
        sizes = {cid: c.num_examples for cid, c in self.clients.items()}
        plan = StepPlan(epoch, self.client_batch_size(), sizes)
        stats = EpochStats()
        bar = progress(
            range(steps), f"epoch {epoch + 1}/{self.cfg.epochs}", enabled=self.cfg.progress
        )
        while due := plan.due():
            if plan.step >= steps and (plan.step >= 2 * steps or not self._reachable(due)):
                log.warning(
                    "Epoch %d ends with clients %s short of their partition (unreachable).",
                    epoch + 1,
                    sorted(due),
                )
                break
            self.step(plan, stats)
            plan.step += 1
            stats.steps += 1
            bar.update(1)
            if stats.samples:
                bar.set_postfix(loss=f"{stats.loss_sum / stats.samples:.3f}", refresh=False)
        bar.close()
        return stats, plan

    def step(self, plan: StepPlan, stats: EpochStats) -> None:
        """One MPSL step (:meth:`_step`), timed into :attr:`step_times`."""
        timing = StepTiming(plan.epoch + 1, plan.step)
        self.legs.timings = timing.legs
        started = time.perf_counter()
        self._step(plan, stats, timing)
        timing.wall_s = time.perf_counter() - started
        self.step_times.append(timing.to_row())

    def _step(self, plan: StepPlan, stats: EpochStats, timing: StepTiming) -> None:
        """One MPSL step, in the order of the paper; the server's compute in ``timing``."""
        batches = self._present(plan.due(), stats)
        # 1. Client forward: activations prefetched with the last backward reply, or asked.
        acts = plan.take_prefetched(batches, void=self.roster.take_moved())
        missing = {cid: p for cid, p in batches.items() if cid not in acts}
        if missing:
            acts |= self.legs.forward(missing, plan.group, stats, self._restore)
        if not acts:
            return
        stats.clients_per_step.append(len(acts))
        # 2. Concatenate and run body + tail once over the global batch.
        computing = time.perf_counter()
        outputs = self.server.forward(dict(sorted(acts.items())))
        timing.server_s += time.perf_counter() - computing
        lr = self.server.lr
        # 3-4. Loss leg (dL_n/dz_n from each client's labels), one backward over the
        # |B_n|/|B|-weighted loss; retrieval computes its loss here (no labels).
        if self.exp.task.labels_on_client:
            grads = self.legs.loss({c: batches[c] for c in acts}, outputs, lr, plan.group, stats)
            computing = time.perf_counter()
            cut, total = self.server.backward_from_client_grads(grads)
        else:
            computing = time.perf_counter()
            cut, loss, total = self.server.backward_from_server_loss()
            stats.loss_sum += loss * total
            stats.samples += total
        timing.server_s += time.perf_counter() - computing
        timing.samples = total
        # 5. Cut-layer gradients back; the replies prefetch the next batch's activations.
        trained = {cid: batches[cid] for cid in cut}
        plan.advance(trained)
        plan.pending = self.legs.backward(trained, cut, lr, plan.due(cut), plan.group, stats)

    # ------------------------------------------------------------------ membership
    def _present(self, batches: dict, stats: EpochStats) -> dict:
        """The batches of clients whose node is online (others count as dropped)."""
        online = self.roster.refresh(
            self.grid,
            self.exchange,
            self.cfg.step_timeout,
            message_ttl(self.cfg),
            self.cfg.max_partition_size,
        )
        gone = [cid for cid in batches if self.roster.node_of(cid) not in online]
        stats.dropped += len(gone)
        return {cid: p for cid, p in batches.items() if cid not in gone}

    def _reachable(self, batches: dict) -> list[int]:
        """Planned clients whose node is online and holds no unanswered message."""
        online = set(self.grid.get_node_ids()) - self.exchange.busy_nodes()
        return [cid for cid in batches if self.roster.node_of(cid) in online]

    def _require_finite(self, epoch: int) -> None:
        """End the run if the server model or the aggregated head holds NaN or Inf.

        The gate keeps non-finite and oversized payloads out, so this should never fire;
        if it does (an overflow from plausible inputs, a learning rate far too high), every
        later step would only spread it, and the run must fail rather than report.
        """
        for side, module in (("server model", self.server_model), ("aggregated head", self.head)):
            for name, p in module.named_parameters():
                if not torch.isfinite(p).all():
                    raise RuntimeError(
                        f"Epoch {epoch + 1}: the {side}'s '{name}' became non-finite (NaN or "
                        "Inf), so the run stops. Check the warnings above for clients that "
                        "were dropped, and lower learning-rate if none were."
                    )

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        """Server side and every client's state, as :mod:`mpsl_flwr.checkpoint` stores it."""
        return resume.checkpoint_payload(
            epoch + 1,
            self.server_model,
            self.head,
            self.server.optimizer,
            self.server.scheduler,
            self._client_states(epoch),
            set(self.clients),
        )

    def _client_states(self, epoch: int) -> dict[int, dict[str, object]]:
        """``query.state`` of every client; one that does not answer is asked once more as
        soon as its node is free (within ``step-timeout``), since a checkpoint without a
        client's state cannot resume exactly."""
        states = self.legs.states(list(self.clients), f"e{epoch}state")
        missing = [cid for cid in self.clients if cid not in states]
        if missing:
            nodes = {self.roster.node_of(cid) for cid in missing}
            deadline = time.monotonic() + self.cfg.step_timeout
            while nodes & self.exchange.busy_nodes() and time.monotonic() < deadline:
                time.sleep(0.05)
            states |= self.legs.states(missing, f"e{epoch}state-again")
        return states
