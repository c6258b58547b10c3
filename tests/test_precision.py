"""Server precision (issue 14): fp32 is the old computation bit for bit; bf16 autocast
(here on the CPU) stays close to it, with fp32 weights, optimizer and cut gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mpsl_flwr.config import ConfigError
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.optim import make_optimizer, make_scheduler
from mpsl_flwr.precision import autocast_dtype
from mpsl_flwr.split_server import SplitServer
from mpsl_flwr.tasks import CLASSIFICATION

CPU = torch.device("cpu")


def _setup(tiny) -> tuple[Experiment, dict[int, dict[str, Tensor]], dict[int, Tensor]]:
    """A tiny experiment, two clients' activations (from the real head) and logit grads."""
    exp = Experiment.from_config(tiny())
    head, _ = exp.initial_model()
    batch = exp.train_set().batch(list(range(12)))
    with torch.no_grad():
        acts = head(batch)
    split = {0: {s: a[:5] for s, a in acts.items()}, 1: {s: a[5:] for s, a in acts.items()}}
    grads = {0: torch.randn(5, exp.spec.num_classes), 1: torch.randn(7, exp.spec.num_classes)}
    return exp, split, grads


def _server(exp: Experiment, precision: torch.dtype | None) -> SplitServer:
    torch.manual_seed(0)
    _, model = exp.initial_model()
    optimizer = make_optimizer(model.parameters(), exp.cfg.optim)
    return SplitServer(
        model,
        optimizer,
        make_scheduler(optimizer, exp.cfg.optim, 4),
        CLASSIFICATION,
        CPU,
        precision,
    )


def _step(server: SplitServer, acts, grads) -> tuple[dict, dict, dict]:
    outputs = server.forward(acts)
    cut, _ = server.backward_from_client_grads(grads)
    return outputs, cut, {k: p.detach().clone() for k, p in server.model.named_parameters()}


def _old_step(server: SplitServer, acts, grads) -> tuple[dict, dict, dict]:
    """The server step as SplitServer computed it before ``server-precision`` existed."""
    model, order = server.model, sorted(acts)
    model.train()
    inputs = {
        s: torch.cat([acts[c][s] for c in order]).to(CPU, torch.float32).requires_grad_(True)
        for s in model.streams
    }
    output = model(inputs)
    sizes = [len(grads[c]) for c in order]
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    slices = {c: slice(bounds[i], bounds[i + 1]) for i, c in enumerate(order)}
    grad = torch.zeros_like(output)
    for c in order:
        grad[slices[c]] = grads[c] * (len(grads[c]) / sum(sizes))
    output.backward(grad)
    server.optimizer.step()
    server.optimizer.zero_grad(set_to_none=True)
    server.scheduler.step()
    outputs = {c: output[sl].detach().cpu() for c, sl in slices.items()}
    cut = {c: {s: x.grad[slices[c]].detach().cpu() for s, x in inputs.items()} for c in order}
    return outputs, cut, {k: p.detach().clone() for k, p in model.named_parameters()}


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_equal(a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_fp32_is_the_old_computation_bit_for_bit(tiny) -> None:
    exp, acts, grads = _setup(tiny)
    assert autocast_dtype("fp32", CPU) is None and autocast_dtype("auto", CPU) is None
    new, old = _server(exp, None), _server(exp, None)
    for _ in range(3):  # later steps also cover the optimizer state
        for got, want in zip(_step(new, acts, grads), _old_step(old, acts, grads), strict=True):
            _assert_equal(got, want)


def test_bf16_autocast_stays_close_to_fp32_with_fp32_weights_and_grads(tiny) -> None:
    exp, acts, grads = _setup(tiny)
    bf16 = autocast_dtype("bf16", CPU)
    assert bf16 is torch.bfloat16
    fp32, half = _server(exp, None), _server(exp, bf16)
    pairs = zip(fp32.model.parameters(), half.model.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    out32, cut32, params32 = _step(fp32, acts, grads)
    out16, cut16, params16 = _step(half, acts, grads)
    for c in out32:
        assert out16[c].dtype == torch.float32
        torch.testing.assert_close(out16[c], out32[c], rtol=0.05, atol=0.05)
        for s in cut32[c]:
            assert cut16[c][s].dtype == torch.float32  # what the clients receive
            scale = cut32[c][s].abs().max()
            torch.testing.assert_close(cut16[c][s], cut32[c][s], rtol=0.1, atol=0.05 * scale)
    moved = False
    for k in params32:
        assert params16[k].dtype == torch.float32  # fp32 master weights
        torch.testing.assert_close(params16[k], params32[k], rtol=0.01, atol=2e-3)
        moved |= not torch.equal(params16[k], params32[k])
    assert moved, "bf16 autocast changed nothing: it did not run"
    for state in half.optimizer.state.values():
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_server_precision_is_validated_in_one_line(tiny, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="server-precision"):
        tiny(server_precision="fp16")
    assert tiny(server_precision="bf16").server_precision == "bf16"
    monkeypatch.setattr("mpsl_flwr.precision.bf16_autocast_supported", lambda device: False)
    with pytest.raises(ConfigError) as err:
        autocast_dtype("bf16", torch.device("cuda"))
    assert "\n" not in str(err.value) and 'server-precision="auto"' in str(err.value)
    assert autocast_dtype("auto", torch.device("cuda")) is None  # falls back to fp32
