"""The wire codec of cut-layer tensors (:mod:`mpsl_flwr.protocol.packing`): exact round
trips in every wire dtype, bfloat16 included, and the gate's refusals of what does not
match its header."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from mpsl_flwr.protocol.gate import PayloadError, checked_arrays, decode_array
from mpsl_flwr.protocol.packing import WIRE_DTYPES, encode

LIMIT = 10**8


def _bf16_values() -> torch.Tensor:
    """bfloat16 values fp16 cannot hold: beyond its range, below its subnormals, and
    bfloat16's own subnormals, signed zeros and a normal sample."""
    bits = np.array([1, 2, 0x7F, 0x8001], np.uint16).view(np.int16)
    tiny = torch.from_numpy(bits).view(torch.bfloat16)
    special = torch.tensor([1e30, -3e38, 7e4, 1e-30, 0.0, -0.0], dtype=torch.bfloat16)
    normal = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)).bfloat16()
    return torch.cat([tiny, special, normal.reshape(-1)]).reshape(2, 17)


def _bits(t: torch.Tensor) -> np.ndarray:
    """The bfloat16 bit patterns of ``t`` as uint16."""
    return t.view(torch.int16).numpy().view(np.uint16)


def test_bfloat16_round_trip_is_bit_exact():
    values = _bf16_values()
    array = encode([values], torch.bfloat16)
    assert array.dtype == "bfloat16" and tuple(array.shape) == (2, 17)
    assert len(array.data) == 128 + values.numel() * 2  # the .npy header, 16 bits a value
    back = decode_array("x", array, (2, 17))
    assert back.dtype == torch.float32
    # Every float32 read is exactly the bfloat16 written (its upper 16 bits).
    np.testing.assert_array_equal(
        back.numpy().view(np.uint32), _bits(values).astype(np.uint32) << 16
    )
    assert torch.equal(back.bfloat16().view(torch.int16), values.view(torch.int16))
    assert float(back.abs().max()) > 6.6e4  # beyond float16's range, kept


def test_float32_to_bfloat16_rounds_as_torch_does():
    x = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1)) * 1e3
    back = decode_array("x", encode([x], torch.bfloat16), (3, 5, 7))
    assert torch.equal(back, x.bfloat16().float())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_gate_refuses_non_finite_bfloat16(bad):
    values = _bf16_values()
    values[1, 3] = bad
    content = RecordDict({"act": ArrayRecord({"x": encode([values], torch.bfloat16)})})
    with pytest.raises(PayloadError, match="NaN or Inf"):
        checked_arrays(content, "act", {"x": (2, 17)}, LIMIT)


def test_the_gate_applies_the_magnitude_bound_to_bfloat16():
    content = RecordDict({"act": ArrayRecord({"x": encode([_bf16_values()], torch.bfloat16)})})
    with pytest.raises(PayloadError, match=r"exceeds max-abs-activation \(1e\+06\)"):
        checked_arrays(content, "act", {"x": (2, 17)}, LIMIT, 1e6, "max-abs-activation")


def _claims_bfloat16(payload: np.ndarray, shape: tuple[int, ...]) -> Array:
    """An Array whose header says bfloat16 of ``shape`` around ``payload``'s .npy bytes."""
    return Array("bfloat16", shape, "numpy.ndarray", Array(payload).data)


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        # float32 values behind a bfloat16 header: twice the bytes, another dtype
        (_claims_bfloat16(np.zeros((2, 17), np.float32), (2, 17)), "holds float32"),
        # float16 bit patterns are not bfloat16 ones
        (_claims_bfloat16(np.zeros((2, 17), np.float16), (2, 17)), "holds float16"),
        # the right carrier, one row short of the header
        (_claims_bfloat16(np.zeros((1, 17), np.uint16), (2, 17)), r"payload holds uint16\[1, 17\]"),
        # the right .npy, bytes cut off its end
        (
            Array("bfloat16", (2, 17), "numpy.ndarray", encode([_bf16_values()]).data[:-6]),
            "bytes of values",
        ),
        # a dtype that is not on the wire
        (Array(np.zeros((2, 17), np.uint16)), "has dtype uint16"),
    ],
    ids=["float32-payload", "float16-payload", "short-rows", "short-bytes", "raw-uint16"],
)
def test_the_gate_refuses_a_payload_that_only_claims_bfloat16(array, problem):
    with pytest.raises(PayloadError, match=problem):
        decode_array("x", array, (2, 17))


@pytest.mark.parametrize("name", list(WIRE_DTYPES))
def test_every_wire_dtype_round_trips_what_it_can_hold(name):
    dtype = WIRE_DTYPES[name]
    x = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(2)).to(dtype)
    array = encode([x])
    assert array.dtype == name
    assert torch.equal(decode_array("x", array, (4, 3, 8)), x.float())
