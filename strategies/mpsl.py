"""Multimodal Parallel Split Learning (MPSL) as a Flower strategy.

Fudala, Tsouvalas, Meratnia: "Fine-tuning Multimodal Transformers on Edge: A Parallel
Split Learning Approach" (arXiv 2502.06355). Clients keep only the modality tokenizers
(the head); the server holds the encoder and task head and trains them on the
*concatenated* activations of all clients with one forward and one backward pass per
step, so the server keeps no per-client model and the client computes only its head.

Per step (message types and records in :mod:`mpsl_flwr.protocol`):

1. ``train.forward``: each client draws its batch and returns its activations (steady
   state: they arrived with the previous step's backward reply).
2. The server concatenates them and runs body and tail once.
3. ``train.loss``: each client gets its output slice, computes its loss with its own
   labels and returns ``dL_n/dz_n`` (retrieval skips this: it has no labels, and the
   server computes the contrastive loss over the whole global batch).
4. The server backpropagates ``L_S = sum_n |B_n|/|B| L_n`` once and steps.
5. ``train.backward``: each client gets its cut-layer gradient, recomputes its head,
   steps, and returns the activations of its next batch.

At the end of each epoch the heads are averaged (FedAvg weighted by samples seen), the
pair [aggregated head; server model] is evaluated on the test split, and, with
``head-sync=push``, the average is sent back to the clients with their next batch.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from mpsl_flwr import protocol as P
from mpsl_flwr.checkpoint import Checkpointing, set_rng_state
from mpsl_flwr.config import RunConfig
from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.models.server import ServerModel
from mpsl_flwr.models.split_model import ModelSpec, load_trainable_state, trainable_state
from mpsl_flwr.optim import make_optimizer, make_scheduler, resolve_device
from mpsl_flwr.progress import progress
from mpsl_flwr.split_server import SplitServer
from mpsl_flwr.state import from_array_record, model_arrays, to_array_record
from mpsl_flwr.validation import max_bytes, read_client_arrays
from strategies.discovery import ClientInfo, client_batch_size, discover_clients, message_ttl
from strategies.reporting import EpochEndFn, EvaluateFn, report_epoch

log = logging.getLogger("mpsl_flwr")


@dataclass
class EpochStats:
    """What one epoch measured."""

    loss_sum: float = 0.0
    samples: int = 0
    correct: int = 0
    steps: int = 0
    clients_per_step: list[int] = field(default_factory=list)
    dropped: int = 0


class MPSL:
    """Drives MPSL epochs and steps over a Flower :class:`Grid`.

    Parameters
    ----------
    cfg : RunConfig
        The run configuration (batch size, epochs, timeouts, head-sync policy, ...).
    spec : ModelSpec
        Architecture; tells the expected shape of every client's activations.
    head : ClientHead
        The initial head, pushed to every client before its first step, and the module
        into which the per-epoch average is loaded.
    server_model : ServerModel
        Body and tail, trained here.
    """

    def __init__(
        self, cfg: RunConfig, spec: ModelSpec, head: ClientHead, server_model: ServerModel
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self.head = head
        self.server_model = server_model
        self.device = resolve_device(cfg.server_device)
        self.wire_dtype = torch.float16 if cfg.activation_dtype == "float16" else None
        self.clients: dict[int, ClientInfo] = {}
        self.exchange: P.Exchange | None = None
        self._head_record: ArrayRecord | None = None
        self._synced_nodes: set[int] = set()
        self._restore: dict[int, dict[str, Any]] = {}  # cid -> state to hand back (resume)
        self._moved: set[int] = set()  # clients that changed node since their last batch
        self._rejoined_nodes: set[int] = set()  # nodes owed the current head
        self._foreign_nodes: set[int] = set()  # nodes serving no client of this run

    # ------------------------------------------------------------------ setup
    def _ttl(self) -> float:
        return message_ttl(self.cfg)

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
        grid: Grid,
        evaluate_fn: EvaluateFn | None = None,
        on_epoch_end: EpochEndFn | None = None,
        checkpointing: Checkpointing | None = None,
    ) -> Result:
        """Run ``epochs`` epochs; return the final arrays (head + server) and metrics.

        With ``checkpointing``, a checkpoint is written after every ``checkpoint-every``-th
        epoch, and ``resume=true`` continues after the last one.
        """
        grid = P.MeteredGrid(grid)
        self.grid = grid
        self.meter = grid.meter
        self.exchange = P.Exchange(grid)
        self.clients = discover_clients(grid, self.exchange, self.cfg)
        steps = self.steps_per_epoch()
        if steps == 0:
            raise RuntimeError("No client holds any training data.")
        optimizer = make_optimizer(self.server_model.parameters(), self.cfg)
        scheduler = make_scheduler(optimizer, self.cfg, steps * self.cfg.epochs)
        self.server = SplitServer(
            self.server_model, optimizer, scheduler, self.spec.task, self.device
        )
        self._head_record = to_array_record(trainable_state(self.head))
        first_epoch = 0
        if checkpointing is not None and checkpointing.resume:
            first_epoch = self._resume(checkpointing.load(), optimizer, scheduler)
        result = Result()
        log.info(
            "MPSL: global batch %d, %d per client, %d steps per epoch, %d epochs",
            self.cfg.batch_size,
            self.client_batch_size(),
            steps,
            self.cfg.epochs,
        )
        for epoch in range(first_epoch, self.cfg.epochs):
            t0 = time.time()
            traffic0 = self.meter.totals()
            stats = self.train_epoch(grid, epoch, steps)
            seen = self.aggregate_heads(epoch)
            if self.cfg.head_sync == "push":
                self._head_record = to_array_record(trainable_state(self.head))
                self._synced_nodes = set()
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train-loss": stats.loss_sum / max(1, stats.samples),
                "steps": stats.steps,
                "mean-clients-per-step": sum(stats.clients_per_step)
                / max(1, len(stats.clients_per_step)),
                "dropped-client-steps": stats.dropped,
                "samples-trained": sum(seen.values()),
            }
            if self.spec.kind == "classification":
                row["train-accuracy"] = stats.correct / max(1, stats.samples)
            row.update(self.meter.mb_per_client(traffic0, len(self.clients)))
            row["epoch-time-s"] = round(time.time() - t0, 3)
            report_epoch(result, row, self.head, self.server_model, evaluate_fn, on_epoch_end)
            if checkpointing is not None:
                checkpointing.save_if_due(epoch + 1, lambda e=epoch: self._checkpoint(e))
        result.arrays = model_arrays(self.head, self.server_model)
        return result

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        """Server side and every client's state, as :mod:`mpsl_flwr.checkpoint` stores it."""
        return {
            "server": self.server_model.state_dict(),
            "head": trainable_state(self.head),
            "optimizer": self.server.optimizer.state_dict(),
            "scheduler": self.server.scheduler.state_dict(),
            "clients": self.collect_client_states(epoch),
        }

    def _resume(self, ckpt: dict[str, Any], optimizer, scheduler) -> int:
        self.server_model.load_state_dict(ckpt["server"])
        load_trainable_state(self.head, ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        self._restore = {int(cid): parts for cid, parts in ckpt["clients"].items()}
        if self.cfg.head_sync == "push":
            self._head_record = to_array_record(trainable_state(self.head))
        else:
            self._head_record = None  # clients continue with their own restored heads
        return int(ckpt["epoch"])

    def collect_client_states(self, epoch: int) -> dict[int, dict[str, Any]]:
        """Every client's head and optimiser state (``query.state``), as plain tensors."""
        by_node = self._by_node(self.clients)
        contents = {
            node_id: RecordDict({P.CONFIG: ConfigRecord({"clients": cids})})
            for node_id, cids in by_node.items()
        }
        states: dict[int, dict[str, Any]] = {}
        for node_id, reply in self._send(
            contents, P.QUERY_STATE, f"e{epoch}state", EpochStats()
        ).items():
            for cid in by_node[node_id]:
                parts = {}
                for part in P.CLIENT_STATE_PARTS:
                    record = reply.content.get(P.client_state_key(cid, part))
                    if isinstance(record, ArrayRecord):
                        parts[part] = from_array_record(record)
                    elif record is not None:
                        parts[part] = dict(record.items())
                if parts:
                    states[cid] = parts
        missing = sorted(set(self.clients) - set(states))
        if missing:
            log.warning("Checkpoint lacks the state of clients %s (no answer).", missing)
        return states

    def _restore_records(self, cid: int) -> dict[str, Any]:
        """Records that hand client ``cid`` back its checkpointed state (once)."""
        parts = self._restore.get(cid, {})
        records: dict[str, Any] = {}
        for part, value in parts.items():
            key = P.client_state_key(cid, part, prefix="restore")
            records[key] = ConfigRecord(value) if part.endswith(".cfg") else to_array_record(value)
        return records

    # ------------------------------------------------------------------ epoch
    def train_epoch(self, grid: Grid, epoch: int, steps: int) -> EpochStats:
        """One pass over every partition: ``steps`` MPSL steps, plus up to as many again
        while a client that missed steps (dropped, rejoined) and can be reached still has
        data left, so an epoch trains every reachable sample once."""
        b = self.client_batch_size()
        offsets = {cid: 0 for cid in self.clients}
        pending: dict[int, tuple[P.BatchPlan, dict[str, torch.Tensor]]] = {}
        stats = EpochStats()
        self._seen = {cid: 0 for cid in self.clients}
        bar = progress(
            range(steps), f"epoch {epoch + 1}/{self.cfg.epochs}", enabled=self.cfg.progress
        )
        for step in itertools.count():
            plans = {
                cid: P.BatchPlan(epoch, offsets[cid], min(b, c.num_examples - offsets[cid]))
                for cid, c in self.clients.items()
                if offsets[cid] < c.num_examples
            }
            if not plans:
                break
            if step >= steps and (step >= 2 * steps or not self._reachable(plans)):
                log.warning(
                    "Epoch %d ends with clients %s short of their partition (unreachable).",
                    epoch + 1,
                    sorted(plans),
                )
                break
            pending = self.step(grid, epoch, step, plans, pending, offsets, stats, b)
            stats.steps += 1
            bar.update(1)
            if stats.samples:
                bar.set_postfix(loss=f"{stats.loss_sum / stats.samples:.3f}", refresh=False)
        bar.close()
        return stats

    def _reachable(self, plans: dict[int, P.BatchPlan]) -> list[int]:
        """Planned clients whose node is online and holds no unanswered message."""
        assert self.exchange is not None
        online = set(self.grid.get_node_ids()) - self.exchange.busy_nodes()
        return [cid for cid in plans if self.clients[cid].node_id in online]

    def step(
        self,
        grid: Grid,
        epoch: int,
        step: int,
        plans: dict[int, P.BatchPlan],
        pending: dict[int, tuple[P.BatchPlan, dict[str, torch.Tensor]]],
        offsets: dict[int, int],
        stats: EpochStats,
        b: int,
    ) -> dict[int, tuple[P.BatchPlan, dict[str, torch.Tensor]]]:
        """One MPSL step; returns the activations that arrived for the next step."""
        assert self.exchange is not None
        group = f"e{epoch}s{step}"
        online = self._refresh_membership()
        for cid in [c for c in plans if self.clients[c].node_id not in online]:
            del plans[cid]  # its node is gone (the SuperLink lists it offline)
            stats.dropped += 1
        acts = {
            cid: a
            for cid, (p, a) in pending.items()
            if plans.get(cid) == p and cid not in self._moved
        }
        self._moved.clear()
        need = {cid: p for cid, p in plans.items() if cid not in acts}
        if need:
            acts.update(self._forward_leg(need, group, stats))
        if not acts:
            return {}
        stats.clients_per_step.append(len(acts))
        outputs = self.server.forward({cid: a for cid, a in sorted(acts.items())})
        lr = self.server.lr
        if self.spec.kind == "classification":
            grads = self._loss_leg({c: plans[c] for c in acts}, outputs, group, stats)
            cut, _ = self.server.backward_from_client_grads(grads)
        else:
            cut, loss, total = self.server.backward_from_server_loss()
            stats.loss_sum += loss * total
            stats.samples += total
        for cid in cut:
            offsets[cid] += plans[cid].size
            self._seen[cid] += plans[cid].size
        next_plans = {
            cid: P.BatchPlan(
                epoch, offsets[cid], min(b, self.clients[cid].num_examples - offsets[cid])
            )
            for cid in cut
            if offsets[cid] < self.clients[cid].num_examples
        }
        return self._backward_leg({c: plans[c] for c in cut}, cut, lr, next_plans, group, stats)

    # ------------------------------------------------------------------ membership
    def _refresh_membership(self) -> set[int]:
        """Online node ids; a node not seen before is asked which clients it serves.

        A SuperNode that died and came back has a new node id: its clients move to it,
        get the current aggregated head with their next batch and carry on from where
        the server's offsets say they were.
        """
        assert self.exchange is not None
        online = set(self.grid.get_node_ids())
        known = {c.node_id for c in self.clients.values()}
        new = online - known - self._foreign_nodes - self.exchange.busy_nodes()
        if not new:
            return online
        replies, _ = self.exchange(
            P.make_messages({n: RecordDict() for n in new}, P.QUERY_INFO, "rejoin", self._ttl()),
            self.cfg.step_timeout,
        )
        for node_id, reply in replies.items():
            if P.reply_error(reply) is not None:
                continue  # asked again at the next step
            info = reply.content[P.INFO]
            cids = [int(c) for c in info["clients"]]  # type: ignore[union-attr]
            unknown = [c for c in cids if c not in self.clients]
            if unknown:
                log.warning("Node %d serves unknown clients %s; it is ignored.", node_id, unknown)
                self._foreign_nodes.add(node_id)
                continue
            for cid in cids:
                log.warning(
                    "Client %d rejoined on node %d (was node %d).",
                    cid,
                    node_id,
                    self.clients[cid].node_id,
                )
                self.clients[cid].node_id = node_id
                self._moved.add(cid)
            self._rejoined_nodes.add(node_id)
        return online

    # ------------------------------------------------------------------ legs
    def _by_node(self, cids) -> dict[int, list[int]]:
        return P.nodes_of(cids, {c: i.node_id for c, i in self.clients.items()})

    def _send(
        self, contents: dict[int, RecordDict], message_type: str, group: str, stats: EpochStats
    ) -> dict[int, Message]:
        """Exchange one leg; drop (with a warning) nodes that error or time out."""
        assert self.exchange is not None
        busy = self.exchange.busy_nodes()
        for node_id in sorted(busy & set(contents)):
            log.warning(
                "Node %d still holds an unanswered message; it sits out %s of step %s.",
                node_id,
                message_type,
                group,
            )
            del contents[node_id]
            stats.dropped += 1
        replies, missing = self.exchange(
            P.make_messages(contents, message_type, group, self._ttl()), self.cfg.step_timeout
        )
        for node_id in missing:
            log.warning(
                "Node %d did not answer %s of step %s within step-timeout (%.1fs); its "
                "clients are dropped from this step.",
                node_id,
                message_type,
                group,
                self.cfg.step_timeout,
            )
            stats.dropped += 1
        ok = {}
        for node_id, reply in replies.items():
            if (err := P.reply_error(reply)) is not None:
                log.warning(
                    "Node %d replied to %s of step %s with an error (%s); its clients are "
                    "dropped from this step.",
                    node_id,
                    message_type,
                    group,
                    err,
                )
                stats.dropped += 1
                continue
            ok[node_id] = reply
        return ok

    def _forward_leg(
        self, plans: dict[int, P.BatchPlan], group: str, stats: EpochStats
    ) -> dict[int, dict[str, torch.Tensor]]:
        contents = {}
        by_node = self._by_node(plans)
        for node_id, cids in by_node.items():
            content = RecordDict(
                {P.CONFIG: ConfigRecord(P.plan_record({c: plans[c] for c in cids}))}
            )
            if node_id in self._rejoined_nodes:
                content[P.HEAD] = to_array_record(trainable_state(self.head))
            elif self._head_record is not None and node_id not in self._synced_nodes:
                content[P.HEAD] = self._head_record
            for cid in cids:
                for key, record in self._restore_records(cid).items():
                    content[key] = record
            contents[node_id] = content
        replies = self._send(contents, P.FORWARD, group, stats)
        self._synced_nodes.update(replies)
        self._rejoined_nodes.difference_update(replies)
        for node_id in replies:
            for cid in by_node[node_id]:
                self._restore.pop(cid, None)
        return self._read_activations(replies, plans, stats)

    def _read_activations(
        self, replies: dict[int, Message], plans: dict[int, P.BatchPlan], stats: EpochStats
    ) -> dict[int, dict[str, torch.Tensor]]:
        acts = {}
        lengths = self.head.stream_lengths()
        by_node = self._by_node(plans)
        for node_id, reply in replies.items():
            for cid in by_node.get(node_id, []):
                key = P.act_key(cid)
                if key not in reply.content:
                    continue  # no data left: sits out
                shapes = {s: (plans[cid].size, n, self.spec.width) for s, n in lengths.items()}
                tensors, problem = read_client_arrays(
                    reply.content[key], shapes, max_bytes(self.cfg.max_client_mb)
                )
                if tensors is None:
                    self._reject(cid, node_id, "activations", problem, stats)
                    continue
                acts[cid] = tensors
        return acts

    def _reject(self, cid: int, node_id: int, what: str, problem: str | None, stats) -> None:
        log.warning(
            "Client %d (node %d) sent bad %s: %s; dropped from this step.",
            cid,
            node_id,
            what,
            problem,
        )
        stats.dropped += 1

    def _loss_leg(
        self,
        plans: dict[int, P.BatchPlan],
        outputs: dict[int, torch.Tensor],
        group: str,
        stats: EpochStats,
    ) -> dict[int, torch.Tensor]:
        contents = {}
        by_node = self._by_node(plans)
        for node_id, cids in by_node.items():
            content = RecordDict(
                {P.CONFIG: ConfigRecord(P.plan_record({c: plans[c] for c in cids}))}
            )
            for cid in cids:
                content[P.out_key(cid)] = to_array_record({"out": outputs[cid]})
            contents[node_id] = content
        grads = {}
        for node_id, reply in self._send(contents, P.LOSS, group, stats).items():
            for cid in by_node[node_id]:
                if P.grad_key(cid) not in reply.content:
                    continue
                got, problem = read_client_arrays(
                    reply.content[P.grad_key(cid)],
                    {"out": tuple(outputs[cid].shape)},
                    max_bytes(self.cfg.max_client_mb),
                )
                if got is None:
                    self._reject(cid, node_id, "output gradient", problem, stats)
                    continue
                g = got["out"]
                s = reply.content[P.stats_key(cid)]
                grads[cid] = g
                n = int(s["num-examples"])  # type: ignore[arg-type]
                stats.loss_sum += float(s["loss"]) * n  # type: ignore[arg-type]
                stats.correct += int(s["correct"])  # type: ignore[arg-type]
                stats.samples += n
        return grads

    def _backward_leg(
        self,
        plans: dict[int, P.BatchPlan],
        cut: dict[int, dict[str, torch.Tensor]],
        lr: float,
        next_plans: dict[int, P.BatchPlan],
        group: str,
        stats: EpochStats,
    ) -> dict[int, tuple[P.BatchPlan, dict[str, torch.Tensor]]]:
        contents = {}
        for node_id, cids in self._by_node(plans).items():
            cfg = {"lr": lr, **P.plan_record({c: plans[c] for c in cids})}
            nxt = {c: next_plans[c] for c in cids if c in next_plans}
            cfg.update(P.plan_record(nxt, prefix="next-"))
            content = RecordDict({P.CONFIG: ConfigRecord(cfg)})
            for cid in cids:
                content[P.cut_key(cid)] = to_array_record(cut[cid], self.wire_dtype)
            contents[node_id] = content
        replies = self._send(contents, P.BACKWARD, group, stats)
        acts = self._read_activations(replies, next_plans, stats)
        return {cid: (next_plans[cid], a) for cid, a in acts.items()}

    # ------------------------------------------------------------------ heads
    def aggregate_heads(self, epoch: int) -> dict[int, int]:
        """FedAvg of the heads of the clients that trained this epoch, into ``self.head``."""
        trained = {cid: n for cid, n in self._seen.items() if n > 0}
        stats = EpochStats()
        by_node = self._by_node(trained)
        contents = {
            node_id: RecordDict({P.CONFIG: ConfigRecord({"clients": cids})})
            for node_id, cids in by_node.items()
        }
        by_cid = {}
        for node_id, reply in self._send(contents, P.QUERY_HEAD, f"e{epoch}head", stats).items():
            for cid in by_node[node_id]:
                if P.head_key(cid) in reply.content:
                    by_cid[cid] = RecordDict(
                        {
                            "arrays": reply.content[P.head_key(cid)],
                            "metrics": MetricRecord({"num-examples": trained[cid]}),
                        }
                    )
        # Summed in client order, not arrival order, so the average is reproducible.
        records = [by_cid[cid] for cid in sorted(by_cid)]
        if records:
            avg = aggregate_arrayrecords(records, "num-examples")
            load_trainable_state(self.head, from_array_record(avg))
        else:
            log.warning("No client head reached the server after epoch %d.", epoch + 1)
        return trained
