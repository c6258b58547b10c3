"""The wire form of cut-layer tensors: one array per stream for all clients of a node.

Flower serialises every Array of a message as an object of its own (pushed and pulled at
most two at a time), so a node serving hundreds of logical clients paid for hundreds of
arrays per leg (DESIGN.md, "Transport facts"). A leg's payload of one node therefore
travels *packed*: per stream, the tensors of its clients concatenated along the batch
dimension in the order of their client ids (ascending, the order of the plan), one
Array. The rows of each client are the *index*: the server's requests take it from the
plan; a client's replies state it (``clients``, ``num-examples``) and the server's gate
checks it against the plan before it splits anything (:mod:`mpsl_flwr.protocol.mpsl`).

Dtypes: float32, float16 and bfloat16 (``activation-dtype``). ArrayRecord cannot carry
bfloat16 (numpy has no such dtype), so a bfloat16 Array is declared ``"bfloat16"`` in its
header and carries the raw 16-bit patterns as a ``uint16`` ``.npy`` payload; the reader
widens them to float32 exactly (a bfloat16 is the top half of a float32).

Copies from a client tensor to the server tensor, and back (CPU, values only):

==========================  ========================================  =====================
step                        before (one record per client)            now (packed)
==========================  ========================================  =====================
cast to the wire dtype      ``t.to(dtype)``: 1 (none for float32)      fused into the write
concatenate a node's rows   none (one Array per client)                fused into the write
tensor -> ``.npy`` bytes    ``np.save`` into ``BytesIO``: 2 (each      1: every part written
                            chunk's ``tobytes``, then the write);      (cast) straight into
                            ``np.ascontiguousarray`` 1 if strided      the ``.npy`` buffer,
                                                                       which ``getvalue``
                                                                       hands over unshared
``.npy`` bytes -> float32   ``astype``: 1 (gate); client side:         1: ``astype`` (or the
                            ``copy()`` + ``.to(float32)``: 2 for fp16  bfloat16 widening)
per-client tensors          (separate arrays)                          0: ``torch.split``
                                                                       views
==========================  ========================================  =====================

So a tensor crosses in 2 copies (write, read) instead of 3-5: per leg and direction,
client -> server 3 (fp32) or 4 (fp16) before, 2 now; server -> client 3 (fp32) or 5
(fp16) before, 2 now. On a GPU server the write also does the device-to-host transfer
(before: ``.cpu()``, one more). Not counted: Flower's own serialisation of the message
(protobuf, chunks; its ``Array.inflate`` copies the bytes once more) and the server's
``torch.cat`` of all nodes' clients into one global batch.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor

NUMPY_STYPE = "numpy.ndarray"  # flwr's SType.NUMPY: the raw bytes of a .npy file

WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# The numpy dtype of the .npy payload of each wire dtype (bfloat16: its bit patterns).
_CARRIERS: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
}


def carrier(wire_dtype: str) -> np.dtype:
    """The numpy dtype an Array declared ``wire_dtype`` holds in its ``.npy`` payload."""
    return _CARRIERS[wire_dtype]


def wire_name(dtype: torch.dtype) -> str:
    """The name a tensor of ``dtype`` travels as (one of :data:`WIRE_DTYPES`)."""
    for name, d in WIRE_DTYPES.items():
        if d == dtype:
            return name
    raise TypeError(f"{dtype} cannot travel on the wire; use one of {sorted(WIRE_DTYPES)}.")


# ------------------------------------------------------------------ one Array
def encode(parts: Sequence[Tensor], dtype: torch.dtype | None = None) -> Array:
    """``torch.cat(parts)`` cast to ``dtype`` (default: the parts' own) as one Array.

    Each part is copied once, cast and moved to the CPU on the way, straight into the
    ``.npy`` buffer that becomes the Array's data.
    """
    name = wire_name(dtype or parts[0].dtype)
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer,
        {
            "descr": np.lib.format.dtype_to_descr(carrier(name)),
            "fortran_order": False,
            "shape": shape,
        },
    )
    offset = buffer.tell()
    size = offset + int(np.prod(shape, dtype=np.int64)) * carrier(name).itemsize
    if size > offset:
        buffer.seek(size - 1)
        buffer.write(b"\0")  # size the buffer; the parts overwrite all but the header
        view = buffer.getbuffer()
        _write(view, offset, shape, name, parts)
        view.release()
    # Unshared (the view is released), getvalue() hands over the buffer without a copy.
    return Array(dtype=name, shape=shape, stype=NUMPY_STYPE, data=buffer.getvalue())


def _write(
    view: memoryview, offset: int, shape: tuple[int, ...], name: str, parts: Sequence[Tensor]
) -> None:
    """Copy ``parts`` one after the other into ``view[offset:]`` as ``name`` values (the
    arrays over ``view`` die with this frame, so the caller can release it)."""
    values = np.frombuffer(view, dtype=carrier(name), offset=offset).reshape(shape)
    out = torch.from_numpy(values.view(np.int16) if name == "bfloat16" else values)
    out = out.view(WIRE_DTYPES[name])
    start = 0
    for part in parts:
        rows = part.shape[0]
        out[start : start + rows].copy_(part.detach())
        start += rows


def to_float32(array: Array, offset: int, count: int) -> Tensor:
    """The ``count`` values of ``array``'s payload from byte ``offset`` as a float32 tensor
    of the array's shape: one copy, which does not alias the message. The caller has
    checked that the payload holds them (:func:`mpsl_flwr.protocol.gate.decode_array`)."""
    raw = np.frombuffer(array.data, dtype=carrier(array.dtype), count=count, offset=offset)
    if array.dtype == "bfloat16":
        wide = raw.astype(np.uint32)
        wide <<= 16  # a bfloat16 is the upper 16 bits of the float32 of the same value
        values = wide.view(np.float32)
    else:
        values = raw.astype(np.float32)
    return torch.from_numpy(values.reshape(tuple(array.shape)))


# ------------------------------------------------------------------ one node's clients
def pack(
    per_client: Mapping[int, Mapping[str, Tensor]], dtype: torch.dtype | None = None
) -> ArrayRecord:
    """The tensors of several clients (same streams, any rows) as one ArrayRecord: one
    Array per stream, the clients' rows in ascending client id."""
    cids = sorted(per_client)
    streams = list(per_client[cids[0]])
    return ArrayRecord({s: encode([per_client[c][s] for c in cids], dtype) for s in streams})


def unpack(tensors: Mapping[str, Tensor], rows: Mapping[int, int]) -> dict[int, dict[str, Tensor]]:
    """Inverse of :func:`pack`, given each client's rows (``rows``, in ascending client id;
    they must add up to every stream's length): views, no copy."""
    cids = sorted(rows)
    sizes = [rows[c] for c in cids]
    out: dict[int, dict[str, Tensor]] = {c: {} for c in cids}
    for stream, t in tensors.items():
        for cid, part in zip(cids, torch.split(t, sizes), strict=True):
            out[cid][stream] = part
    return out
