"""Checks on what a client sends, before any of it touches the server model.

A reply whose arrays have the wrong names, shapes or dtypes, hold NaN or Inf, or exceed
the configured size (``max-client-mb``) is rejected: the strategy drops that client from
the step with a warning naming its node, and the server model is not touched by it.
Checks read the serialized record first, so an oversized or mistyped payload is refused
before it is decoded into tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord

from mpsl_flwr.state import from_array_record

WIRE_DTYPES = ("float32", "float16")


def read_client_arrays(
    record: ArrayRecord,
    expected_shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int,
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Decode ``record`` to float32 tensors if it is well-formed; else ``(None, reason)``."""
    size = record.count_bytes()
    if size > max_bytes:
        return None, f"{size / 1e6:.1f} MB exceeds max-client-mb ({max_bytes / 1e6:.1f} MB)"
    if set(record) != set(expected_shapes):
        return None, f"arrays {sorted(record)}, expected {sorted(expected_shapes)}"
    for name, array in record.items():
        if array.dtype not in WIRE_DTYPES:
            return None, f"'{name}' has dtype {array.dtype}, expected one of {WIRE_DTYPES}"
        if tuple(array.shape) != tuple(expected_shapes[name]):
            return None, (
                f"'{name}' has shape {list(array.shape)}, expected {list(expected_shapes[name])}"
            )
    tensors = from_array_record(record, dtype=torch.float32)
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            return None, f"'{name}' holds NaN or Inf"
    return tensors, None


def max_bytes(megabytes: float) -> int:
    return int(np.floor(megabytes * 1e6))
