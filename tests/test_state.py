"""Tensors through Flower records: exact round trips, whatever the layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array

from mpsl_flwr.state import _to_numpy, from_array_record, to_array_record


@pytest.mark.parametrize(
    "value",
    [
        np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32),
        np.arange(10),
        np.zeros((0, 5), np.float32),
        np.asfortranarray(np.random.default_rng(1).standard_normal((3, 4))),
        np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float16),
        np.array(3.0),
        np.array([True, False]),
    ],
)
def test_array_values_come_back_exactly_and_writable(value):
    got = _to_numpy(Array(value))
    assert got.dtype == value.dtype and got.shape == value.shape
    np.testing.assert_array_equal(got, value)
    got[...] = 0  # a copy, not a view of the message's bytes


def test_record_round_trip_keeps_names_values_and_dtypes():
    tensors = {"w": torch.randn(5, 7), "h": torch.randn(3).half(), "i": torch.arange(4)}
    back = from_array_record(to_array_record(tensors))
    assert back.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype
        torch.testing.assert_close(back[k], t, rtol=0, atol=0)
