"""Trainable weights and optimiser state <-> Flower records.

A ClientApp is rebuilt for every message (and, in deployment, runs in a new process),
so whatever must survive between messages goes into ``context.state`` through these
helpers: tensors as an :class:`ArrayRecord`, the rest as JSON in a :class:`ConfigRecord`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor, nn

from mpsl_flwr.models.split_model import load_trainable_state, trainable_state

R = TypeVar("R", ArrayRecord, ConfigRecord, MetricRecord)


def record_of(records: RecordDict, key: str, kind: type[R]) -> R:
    """``records[key]``, which must be a ``kind`` record (a RecordDict holds three kinds).

    For ``context.state`` and a message's content alike: the typed way to read a record.
    """
    record = records[key]
    if not isinstance(record, kind):
        raise TypeError(f"state[{key!r}] is a {type(record).__name__}, not a {kind.__name__}.")
    return record


def to_array_record(tensors: dict[str, Tensor], dtype: torch.dtype | None = None) -> ArrayRecord:
    """Tensors (any device) as an ArrayRecord, optionally cast to ``dtype`` first."""
    record = ArrayRecord()
    for name, t in tensors.items():
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if t.dtype == torch.bfloat16:
            raise TypeError(
                f"'{name}' is bfloat16, which ArrayRecord cannot carry as such; "
                "mpsl_flwr.protocol.packing.encode carries its bit patterns."
            )
        record[name] = Array(np.ascontiguousarray(t.cpu().numpy()))
    return record


def from_array_record(
    record: ArrayRecord, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> dict[str, Tensor]:
    """An ArrayRecord as tensors on ``device`` (floating ones cast to ``dtype``)."""
    out = {}
    for name, arr in record.items():
        t = torch.from_numpy(_to_numpy(arr))
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.to(device)
    return out


def _to_numpy(arr: Array) -> np.ndarray:
    """A writable copy of ``arr``'s values.

    ``Array.numpy()`` runs ``np.load``, whose header parsing costs more than copying a
    small array; a ClientApp reads hundreds of arrays per message (head and AdamW
    state), so C-ordered ``.npy`` payloads are read straight from their trailing bytes.
    """
    dtype = np.dtype(arr.dtype)
    count = int(np.prod(arr.shape, dtype=np.int64))
    data = arr.data
    offset = len(data) - count * dtype.itemsize
    if (
        arr.stype == "numpy.ndarray"
        and 0 < offset <= 4096
        and data[:6] == b"\x93NUMPY"
        and b"'fortran_order': False" in data[:offset]
        and not dtype.hasobject
    ):
        return (
            np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(arr.shape).copy()
        )
    return np.array(arr.numpy(), copy=True)


def save_module(state: RecordDict, key: str, module: nn.Module) -> None:
    """Store ``module``'s trainable parameters under ``key``."""
    state[key] = to_array_record(trainable_state(module))


def load_module(state: RecordDict, key: str, module: nn.Module) -> bool:
    """Restore trainable parameters saved by :func:`save_module`; False if none saved."""
    if key not in state:
        return False
    load_trainable_state(module, from_array_record(record_of(state, key, ArrayRecord)))
    return True


def save_optimizer(state: RecordDict, key: str, optimizer: torch.optim.Optimizer) -> None:
    """Store an optimiser's state dict: tensors under ``key``, the rest under ``key + '.cfg'``."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    state[key] = to_array_record(tensors)
    state[key + ".cfg"] = ConfigRecord(
        {"param-groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    )


def load_optimizer(state: RecordDict, key: str, optimizer: torch.optim.Optimizer) -> bool:
    """Restore what :func:`save_optimizer` stored; False if nothing was saved."""
    if key not in state:
        return False
    cfg = record_of(state, key + ".cfg", ConfigRecord)
    per_param: dict[int, dict[str, Any]] = {}
    for name, tensor in from_array_record(record_of(state, key, ArrayRecord)).items():
        idx, field = name.split(".", 1)
        per_param.setdefault(int(idx), {})[field] = tensor
    for idx, values in json.loads(str(cfg["scalars"])).items():
        per_param.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict(
        {"state": per_param, "param_groups": json.loads(str(cfg["param-groups"]))}
    )
    return True


def model_arrays(head: nn.Module, server: nn.Module) -> ArrayRecord:
    """The trainable weights of both sides, prefixed ``head.`` and ``server.``."""
    return ArrayRecord(
        {
            **{f"head.{k}": v for k, v in to_array_record(trainable_state(head)).items()},
            **{f"server.{k}": v for k, v in to_array_record(trainable_state(server)).items()},
        }
    )
