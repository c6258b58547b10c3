"""The wire codec of cut-layer tensors (:mod:`mpsl_flwr.protocol.packing`): exact round
trips in every wire dtype, bfloat16 included, and the gate's refusals of what does not
match its header."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from mpsl_flwr.protocol import mpsl as P
from mpsl_flwr.protocol.gate import PayloadError, checked_arrays, decode_array, packed_index
from mpsl_flwr.protocol.packing import WIRE_DTYPES, encode, pack, unpack

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


# ------------------------------------------------------------------ packing
def _acts(rows: dict[int, int], dtype=torch.float32) -> dict[int, dict[str, torch.Tensor]]:
    """Distinct values per client and stream (``image`` [r, 5, 8], ``text`` [r, 3, 8])."""
    g = torch.Generator().manual_seed(3)
    return {
        cid: {"image": torch.randn(n, 5, 8, generator=g), "text": torch.randn(n, 3, 8, generator=g)}
        for cid, n in rows.items()
    }


def test_pack_is_one_array_per_stream_in_client_order_and_unpacks_to_views():
    acts = _acts({7: 3, 2: 1, 4: 5})  # any dict order: packed in ascending client id
    record = pack(acts)
    assert set(record) == {"image", "text"}
    assert tuple(record["image"].shape) == (9, 5, 8) and tuple(record["text"].shape) == (9, 3, 8)
    tensors = {name: decode_array(name, a, tuple(a.shape)) for name, a in record.items()}
    back = unpack(tensors, {2: 1, 4: 5, 7: 3})
    assert list(back) == [2, 4, 7]
    for cid, streams in acts.items():
        for name, t in streams.items():
            assert torch.equal(back[cid][name], t), (cid, name)
            assert back[cid][name].untyped_storage().data_ptr() == (
                tensors[name].untyped_storage().data_ptr()
            )  # a view of the one decoded tensor, no copy


@pytest.mark.parametrize("name", list(WIRE_DTYPES))
def test_pack_casts_every_client_to_the_wire_dtype(name):
    acts = _acts({0: 2, 1: 3})
    record = pack(acts, WIRE_DTYPES[name])
    assert {a.dtype for a in record.values()} == {name}
    tensors = {n: decode_array(n, a, tuple(a.shape)) for n, a in record.items()}
    for cid, streams in unpack(tensors, {0: 2, 1: 3}).items():
        for stream, t in streams.items():
            assert torch.equal(t, acts[cid][stream].to(WIRE_DTYPES[name]).float())


PLANNED = {0: 2, 1: 3, 5: 4}


@pytest.mark.parametrize(
    ("index", "problem"),
    [
        ({"clients": [1, 0], "num-examples": [3, 2]}, "ascending"),  # out of order
        ({"clients": [0, 0], "num-examples": [2, 2]}, "distinct"),  # twice
        ({"clients": [0, 9], "num-examples": [2, 4]}, "of the plan"),  # not planned
        ({"clients": [0, 1], "num-examples": [3, 2]}, "'num-examples' of client 0 is 3"),  # shifted
        ({"clients": [0, 1], "num-examples": [2]}, "a list of 2 entries"),  # short index
        ({"clients": [0, 1], "num-examples": 5}, "a list of 2 entries"),  # not a list
        ({"clients": 0, "num-examples": [2]}, "list of integers"),
        ({"num-examples": [2]}, "'clients' is None"),
    ],
    ids=[
        "out-of-order",
        "duplicate",
        "not-planned",
        "offsets-shifted",
        "short-index",
        "rows-not-a-list",
        "clients-not-a-list",
        "no-clients",
    ],
)
def test_a_bad_index_is_refused(index, problem):
    with pytest.raises(PayloadError, match=problem):
        packed_index(MetricRecord(index), PLANNED)


def test_a_good_index_names_each_listed_clients_rows():
    index = MetricRecord({"clients": [0, 5], "num-examples": [2, 4]})
    assert packed_index(index, PLANNED) == {0: 2, 5: 4}  # client 1 sent nothing: sits out


# ------------------------------------------------------------------ a packed reply through the gate
def _reply(rows: dict[int, int], dtype=torch.float32) -> tuple[RecordDict, dict]:
    acts = _acts(rows)
    reply = RecordDict()
    P.put_activations(reply, acts, dtype)
    return reply, acts


def _read(reply: RecordDict, planned: dict[int, int], limit: int = LIMIT, max_abs=100.0):
    plans = {c: P.BatchPlan(0, 0, n) for c, n in planned.items()}
    return P.read_activations(reply, plans, {"image": 5, "text": 3}, 8, limit, max_abs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_packed_reply_reads_back_per_client(dtype):
    reply, acts = _reply({0: 2, 5: 4}, dtype)
    assert set(reply) == {"act", "stats"}  # one record of arrays for the node, one index
    got, rejected = _read(reply, PLANNED)
    assert list(got) == [0, 5]
    # The plan lists only clients with data left, so an honest node answers for each:
    # planned client 1, absent from the reply, is refused (named and counted).
    assert [(r.cid, "no activations" in r.problem) for r in rejected] == [(1, True)]
    for cid, streams in acts.items():
        for name, t in streams.items():
            assert torch.equal(got[cid][name], t.to(dtype).float())


def test_bad_values_drop_only_their_client_a_bad_whole_drops_the_node():
    reply, _ = _reply({0: 2, 1: 3})
    record = reply["act"]
    image = record["image"].numpy().copy()
    image[2, 0, 0] = np.nan  # the first row of client 1
    reply["act"] = ArrayRecord({"image": Array(image), "text": record["text"]})
    got, rejected = _read(reply, {0: 2, 1: 3})
    assert list(got) == [0] and [(r.cid, "NaN or Inf" in r.problem) for r in rejected] == [
        (1, True)
    ]
    # One byte short: nothing of the payload can be placed, every planned client is out.
    reply["act"] = ArrayRecord(
        {
            "image": Array("float32", (5, 5, 8), "numpy.ndarray", Array(image).data[:-1]),
            "text": record["text"],
        }
    )
    got, rejected = _read(reply, {0: 2, 1: 3})
    assert got == {} and [r.cid for r in rejected] == [0, 1]
    assert all("payload" in r.problem for r in rejected)


def test_the_size_limit_is_per_client_listed():
    reply, _ = _reply({0: 2, 1: 3})
    size = reply["act"].count_bytes()
    assert _read(reply, {0: 2, 1: 3}, limit=size // 2 + 1)[1] == []
    _, rejected = _read(reply, {0: 2, 1: 3}, limit=size // 2 - 1)
    assert [r.cid for r in rejected] == [0, 1] and "exceeds max-client-mb" in rejected[0].problem
