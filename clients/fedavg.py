"""ClientApp handler of the FedAvg family (stock FedAvg, FedCLIP, LW- and Prog-FedMML).

One ``train`` message is one round: each logical client on this node starts from the
global trainable arrays, trains one local epoch on its partition with mini-batches of
``ceil(B / N)`` in the seeded order, keeping its own AdamW state across rounds in
``context.state``, and the node replies with the sample-weighted average of its
clients' arrays (for one client per node: exactly that client's arrays), which keeps
FedAvg over nodes equal to FedAvg over logical clients.

Staged strategies (``strategies/staged.py``) add the round's ``stage`` to the config: the
model runs and trains only that stage's part, and the frozen blocks the server sends at a
stage switch are kept in ``context.state`` for the rest of the stage.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from clients.runtime import NodeRuntime
from mpsl_flwr.data.partition import client_batch_size, client_seed, steps_per_epoch
from mpsl_flwr.models.split_model import trainable_state
from mpsl_flwr.optim import make_optimizer, scheduled_lr
from mpsl_flwr.staging import FROZEN
from mpsl_flwr.state import load_optimizer, record_of, save_optimizer, to_array_record
from mpsl_flwr.trainer import train_epoch


def local_optim_key(cid: int, stage: int | None = None) -> str:
    # A stage trains other parameters: its AdamW state starts afresh.
    return f"local-optim.{cid}" if stage is None else f"local-optim.{cid}.stage{stage}"


def frozen_blocks(msg: Message, state: RecordDict, stage: int | None) -> ArrayRecord | None:
    """The frozen blocks of ``stage``: from the message (and kept), or kept earlier."""
    if stage is None:
        return None
    if FROZEN in msg.content:
        frozen = record_of(msg.content, FROZEN, ArrayRecord)
        state[FROZEN] = frozen
        state[FROZEN + ".stage"] = ConfigRecord({"stage": stage})
        return frozen
    if FROZEN in state:
        kept = record_of(state, FROZEN + ".stage", ConfigRecord)["stage"]
        if int(kept) == stage:  # type: ignore[arg-type]
            return record_of(state, FROZEN, ArrayRecord)
    return None


def train(msg: Message, context: Context) -> Message:
    """One local epoch per logical client; reply with the averaged trainable arrays."""
    rt = NodeRuntime.from_context(context)
    cfg = rt.cfg
    global_arrays = record_of(msg.content, "arrays", ArrayRecord)
    config = msg.content["config"]
    server_round = int(config["server-round"])  # type: ignore[arg-type]
    stage = int(config["stage"]) if "stage" in config else None  # type: ignore[arg-type]
    frozen = frozen_blocks(msg, context.state, stage)
    optim = cfg.optim
    b = client_batch_size(optim.batch_size, rt.num_clients)
    records, loss_sum, correct, seen = [], 0.0, 0, 0
    for cid in rt.client_ids:
        rows = rt.partition(cid)
        model = rt.full_model(global_arrays, stage, frozen)
        optimizer = make_optimizer(model.parameters(), optim)
        load_optimizer(context.state, local_optim_key(cid, stage), optimizer)
        steps = steps_per_epoch(len(rows), b)
        total = steps * optim.epochs

        def lr_at(step: int, r: int = server_round, s: int = steps, t: int = total) -> float:
            return scheduled_lr(optim, (r - 1) * s + step, t)

        done = train_epoch(
            model,
            optimizer,
            rt.train_set(),
            rows,
            b,
            server_round - 1,
            client_seed(cfg.seed, cid),
            lr_at,
            rt.exp.task,
            rt.device,
        )
        save_optimizer(context.state, local_optim_key(cid, stage), optimizer)
        if done.samples:
            records.append(
                RecordDict(
                    {
                        "arrays": to_array_record(trainable_state(model)),
                        "metrics": MetricRecord({"num-examples": done.samples}),
                    }
                )
            )
        loss_sum += done.loss_sum
        correct += done.correct
        seen += done.samples
    # No data on this node: the global arrays go back with weight zero.
    arrays = aggregate_arrayrecords(records, "num-examples") if records else global_arrays
    metrics = MetricRecord(
        {
            "num-examples": seen,
            "train-loss": loss_sum / max(1, seen),
            "train-accuracy": correct / max(1, seen),
        }
    )
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


HANDLERS = {"train": train}
