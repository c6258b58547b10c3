"""The one validation gate for everything a client sends to the server.

A client is not trusted (docs/security.md). Every reply a server-side codec reads goes
through these checks before any of it is decoded into the server's tensors, the history
or the roster: the record's type; for arrays, the size, names, dtype whitelist, the exact
expected shape, the serialization type, the ``.npy`` header against the Array header, the
payload's byte length against both, and finiteness and a magnitude bound of the values;
for statistics, their type and range; for a packed payload (one array per stream for all
clients of a node, :mod:`mpsl_flwr.protocol.packing`), its index against the plan. A
failed check raises :class:`PayloadError`, whose
message names what was wrong; the leg that asked turns it into a warning naming client,
node and leg, and drops that client from the step.
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor

from mpsl_flwr.protocol.packing import NUMPY_STYPE, carrier, to_float32

WIRE_DTYPES = ("float32", "float16", "bfloat16")
_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER = 4096  # what np.save writes for any shape is far shorter

R = TypeVar("R", ArrayRecord, ConfigRecord, MetricRecord)


class PayloadError(ValueError):
    """A client's payload failed a check of the gate; the message says which."""


@contextmanager
def checking(what: str) -> Iterator[None]:
    """Prefix the problem of a :class:`PayloadError` raised inside with ``what``."""
    try:
        yield
    except PayloadError as err:
        raise PayloadError(f"{what}: {err}") from None


def typed_record(content: RecordDict, key: str, kind: type[R]) -> R:
    """``content[key]``, which must exist and be a ``kind`` record."""
    record = content.get(key)
    if record is None:
        raise PayloadError(f"no '{key}' in the reply")
    if not isinstance(record, kind):
        raise PayloadError(f"'{key}' is a {type(record).__name__}, not a {kind.__name__}")
    return record


# ------------------------------------------------------------------ arrays
@functools.lru_cache(maxsize=256)
def _parse_npy_header(header: bytes, utf8: bool) -> tuple[str, bool, tuple[int, ...]]:
    """``(descr, fortran_order, shape)`` of a ``.npy`` header dict.

    Cached: every honest payload of a leg has the same header, and parsing it
    (``ast.literal_eval``) costs more than the rest of the check.
    """
    text = header.decode("utf-8" if utf8 else "latin1")
    d = ast.literal_eval(text)
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ValueError("not a .npy header dict")
    shape = d["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(n, int) for n in shape):
        raise ValueError("bad shape")
    if not isinstance(d["descr"], str) or not isinstance(d["fortran_order"], bool):
        raise ValueError("bad descr or fortran_order")
    return d["descr"], d["fortran_order"], shape


def _payload_offset(name: str, array: Array, dtype: np.dtype, count: int) -> int:
    """Where the values of ``array``'s ``.npy`` payload start, once the payload is known
    to hold exactly the ``count`` values of ``dtype`` its header claims."""
    data = array.data
    if not isinstance(data, bytes) or data[:6] != _NPY_MAGIC or len(data) < 10:
        raise PayloadError(f"'{name}' payload is not a .npy array")
    major = data[6]
    if major == 1:
        start, hlen = 10, int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        start, hlen = 12, int.from_bytes(data[8:12], "little")
    else:
        raise PayloadError(f"'{name}' payload has .npy version {major}")
    offset = start + hlen
    if hlen > _MAX_NPY_HEADER or offset > len(data):
        raise PayloadError(f"'{name}' payload has a malformed .npy header")
    try:
        descr, fortran, shape = _parse_npy_header(data[start:offset], major == 3)
        payload_dtype = np.dtype(descr)
    except Exception as err:  # any malformed header, whatever numpy or ast raise
        raise PayloadError(f"'{name}' payload has a malformed .npy header ({err})") from None
    if payload_dtype != dtype or fortran or shape != tuple(array.shape):
        raise PayloadError(
            f"'{name}' payload holds {payload_dtype}{list(shape)}"
            f"{' (Fortran order)' if fortran else ''}, its header says "
            f"{array.dtype}{list(array.shape)}"
        )
    if len(data) - offset != count * dtype.itemsize:
        raise PayloadError(
            f"'{name}' payload has {len(data) - offset} bytes of values, its header "
            f"{list(array.shape)} {array.dtype} needs {count * dtype.itemsize}"
        )
    return offset


def decode_array(name: str, array: Array, expected_shape: tuple[int, ...]) -> Tensor:
    """One Array as a float32 tensor, if its header, shape and payload are what is expected.

    The ``.npy`` payload must hold the carrier of the declared dtype (a bfloat16 Array:
    ``uint16`` bit patterns), so a payload is read only as what its header declares.
    """
    if array.dtype not in WIRE_DTYPES:
        raise PayloadError(f"'{name}' has dtype {array.dtype}, expected one of {WIRE_DTYPES}")
    if array.stype != NUMPY_STYPE:
        raise PayloadError(f"'{name}' has stype {array.stype!r}, expected {NUMPY_STYPE!r}")
    if tuple(array.shape) != tuple(expected_shape):
        raise PayloadError(
            f"'{name}' has shape {list(array.shape)}, expected {list(expected_shape)}"
        )
    count = math.prod(expected_shape)
    offset = _payload_offset(name, array, carrier(array.dtype), count)
    return to_float32(array, offset, count)


def check_magnitude(name: str, t: Tensor, bound: float | None, what: str = "") -> None:
    """No NaN or Inf in ``t``, and (with ``bound``) every ``|value| <= bound``.

    One reduction (``aminmax``, which propagates NaN) serves both checks.
    """
    if t.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(t))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise PayloadError(f"'{name}' holds NaN or Inf")
    if bound is not None and max(-lo, hi) > bound:
        raise PayloadError(
            f"'{name}' holds |{max(-lo, hi):.3g}|, which exceeds {what} ({bound:.3g})"
        )


def decoded_arrays(
    content: RecordDict, key: str, expected_shapes: Mapping[str, tuple[int, ...]], limit: int
) -> dict[str, Tensor]:
    """Decode the ArrayRecord ``content[key]`` to float32 tensors if it is well-formed.

    Type, size, names, dtypes, shapes and payload lengths are checked on the serialized
    record, so an oversized or mistyped payload is refused before it is decoded. The
    values are not checked: see :func:`check_magnitude` (or :func:`checked_arrays`).
    """
    record = typed_record(content, key, ArrayRecord)
    size = record.count_bytes()
    if size > limit:
        raise PayloadError(f"{size / 1e6:.1f} MB exceeds max-client-mb ({limit / 1e6:.1f} MB)")
    if set(record) != set(expected_shapes):
        raise PayloadError(f"arrays {sorted(record)}, expected {sorted(expected_shapes)}")
    return {name: decode_array(name, a, expected_shapes[name]) for name, a in record.items()}


def checked_arrays(
    content: RecordDict,
    key: str,
    expected_shapes: Mapping[str, tuple[int, ...]],
    limit: int,
    bound: float | None = None,
    bound_name: str = "",
) -> dict[str, Tensor]:
    """:func:`decoded_arrays`, then the values' finiteness and (with ``bound``) magnitude."""
    tensors = decoded_arrays(content, key, expected_shapes, limit)
    check_values(tensors, bound, bound_name)
    return tensors


def check_values(tensors: Mapping[str, Tensor], bound: float | None, what: str = "") -> None:
    """:func:`check_magnitude` of every tensor of ``tensors``."""
    for name, t in tensors.items():
        check_magnitude(name, t, bound, what)


# ------------------------------------------------------------------ statistics
def _number(v: object) -> float | None:
    """``v`` as a float if it is a real number (bool, lists and strings are not)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def count_value(values: Mapping[str, object], name: str, lo: int, hi: int) -> int:
    """``values[name]``: an integer (an integral float is accepted) in ``[lo, hi]``."""
    return count_of(values.get(name), f"'{name}'", lo, hi)


def count_of(v: object, label: str, lo: int, hi: int) -> int:
    """``v`` (``label`` in a refusal): an integer (an integral float is accepted) in
    ``[lo, hi]``."""
    x = _number(v)
    if x is None or not x.is_integer() or not lo <= x <= hi:
        expected = f"{lo}" if lo == hi else f"an integer in [{lo}, {hi}]"
        raise PayloadError(f"{label} is {v!r}, expected {expected}")
    return int(x)


def loss_value(values: Mapping[str, object], name: str = "loss") -> float:
    """``values[name]``: a finite number >= 0 (a mean cross-entropy)."""
    return loss_of(values.get(name), f"'{name}'")


def loss_of(v: object, label: str) -> float:
    """``v`` (``label`` in a refusal): a finite number >= 0 (a mean cross-entropy)."""
    x = _number(v)
    if x is None or not math.isfinite(x) or x < 0:
        raise PayloadError(f"{label} is {v!r}, expected a finite number >= 0")
    return x


def int_list(values: Mapping[str, object], name: str) -> list[int]:
    """``values[name]``: a list of integers."""
    v = values.get(name)
    if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
        raise PayloadError(f"'{name}' is {v!r}, expected a list of integers")
    return [int(x) for x in v]


def column(values: Mapping[str, object], name: str, length: int) -> list[object]:
    """``values[name]``: a list of ``length`` entries (one per client of a packed reply;
    each entry is checked by its own reader)."""
    v = values.get(name)
    if not isinstance(v, list) or len(v) != length:
        raise PayloadError(f"'{name}' is {v!r}, expected a list of {length} entries")
    return v


# ------------------------------------------------------------------ packed payloads
def packed_index(stats: MetricRecord, planned_rows: Mapping[int, int]) -> dict[int, int]:
    """The rows of each client in a packed reply, checked against the plan.

    ``clients`` must list distinct planned clients in ascending order (the order of the
    packed rows), and ``num-examples`` each one's planned rows; a planned client that is
    not listed sent nothing (it had no data left). The packed arrays must then hold
    exactly the sum of these rows (their shape is checked against it).
    """
    clients = int_list(stats, "clients")
    if clients != sorted(set(clients)) or not set(clients) <= set(planned_rows):
        raise PayloadError(
            f"'clients' is {clients}, expected distinct clients of the plan "
            f"{sorted(planned_rows)} in ascending order"
        )
    counts = column(stats, "num-examples", len(clients))
    return {
        cid: count_of(n, f"'num-examples' of client {cid}", planned_rows[cid], planned_rows[cid])
        for cid, n in zip(clients, counts, strict=True)
    }
