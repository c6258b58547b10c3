"""Label privacy (issue 12): the ``label-privacy`` defences, what they let through, and
what they cost in exactness.

Real runs go over ``LocalGrid`` (real Flower messages to the real ClientApp, in process),
recorded by ``RecordingGrid``; true labels come from the partitions, outside the protocol.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import TINY
from flwr.app import ArrayRecord, Context, RecordDict

from clients.client_app import app as client_app
from clients.runtime import LABEL_SECRET_KEY, NodeRuntime
from mpsl_flwr.config import ConfigError, RunConfig
from mpsl_flwr.data.base import DatasetInfo
from mpsl_flwr.experiment import Experiment, check_label_privacy
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.privacy import attacks
from mpsl_flwr.privacy.label_dp import RandomizedResponse
from mpsl_flwr.privacy.recording import RecordingGrid
from mpsl_flwr.privacy.truth import LabelOracle
from mpsl_flwr.protocol import mpsl as P
from mpsl_flwr.tools.label_attack import best_attack, recorded_run, run_attacks
from strategies.centralized import Centralized
from strategies.mpsl import MPSL

NODES = 3


def _cfg(tmp_path, **values) -> RunConfig:
    return RunConfig.from_mapping({**TINY, "output-dir": str(tmp_path / "out"), **values})


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"label-privacy": "label-DP"}, "must be one of none, client-tail, label-dp"),
        ({"label-privacy": "label-dp", "label-epsilon": 0.0}, "finite number > 0"),
        ({"label-privacy": "label-dp", "label-epsilon": -1.0}, "finite number > 0"),
        ({"label-privacy": "client-tail+label-dp", "label-epsilon": math.inf}, "finite"),
        ({"label-privacy": "label-dp", "label-epsilon": math.nan}, "finite number > 0"),
        ({"label-privacy": "client-tail", "strategy": "fedavg"}, "strategy fedavg sends"),
    ],
)
def test_bad_label_privacy_is_refused_before_anything_starts(values, message):
    with pytest.raises(ConfigError, match=message) as err:
        RunConfig.from_mapping(values)
    assert "\n" not in str(err.value)


def test_label_privacy_on_retrieval_or_a_single_class_is_refused(tmp_path):
    for privacy in ("client-tail", "label-dp"):
        cfg = _cfg(tmp_path, dataset="synthetic-retrieval", **{"label-privacy": privacy})
        with pytest.raises(ConfigError, match="retrieval task"):
            Experiment.from_config(cfg)
    one_class = DatasetInfo("one", "classification", ("image", "text"), 1, ("only",))
    with pytest.raises(ConfigError, match="needs at least 2 classes"):
        check_label_privacy(_cfg(tmp_path, **{"label-privacy": "label-dp"}), one_class)
    # The epsilon of a setting without label-dp is not read.
    RunConfig.from_mapping({"label-privacy": "client-tail", "label-epsilon": -1.0})


# ------------------------------------------------------------------ randomized response
def test_randomized_response_keeps_with_p_and_moves_uniformly():
    rr = RandomizedResponse(epsilon=1.0, num_classes=5)
    assert rr.keep_probability == pytest.approx(math.e / (math.e + 4))
    y = np.repeat(np.arange(5), 20_000)
    r = rr.noisy(y, np.random.default_rng(0))
    kept = (r == y).mean()
    assert kept == pytest.approx(rr.keep_probability, abs=0.01)
    moved = r[(y == 0) & (r != 0)]
    counts = np.bincount(moved, minlength=5)[1:]  # the other 4 classes, equally often
    assert counts.min() / counts.max() > 0.9
    # The empirical likelihood ratio stays within e^eps.
    p_same = (r[y == 0] == 0).mean()
    p_cross = (r[y == 1] == 0).mean()
    assert p_same / p_cross == pytest.approx(math.exp(1.0), rel=0.1)


def test_attack_bound_uniform_prior_is_p_and_skew_raises_it():
    rr = RandomizedResponse(epsilon=2.0, num_classes=10)
    assert rr.attack_bound() == pytest.approx(rr.keep_probability)
    assert rr.attack_bound(np.eye(10)[3]) == pytest.approx(1.0)  # one class: nothing to hide
    skewed = np.array([0.7] + [0.3 / 9] * 9)
    assert rr.keep_probability < rr.attack_bound(skewed) < 1.0
    with pytest.raises(ValueError, match="finite number > 0"):
        RandomizedResponse(0.0, 10)


def _context(cfg: RunConfig, node_config: dict) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 2, **node_config},
        state=RecordDict(),
        run_config=cfg.to_mapping(),
    )


def test_noisy_labels_are_fixed_for_the_run_secret_and_never_sent(tmp_path):
    cfg = _cfg(tmp_path, **{"label-privacy": "label-dp", "label-epsilon": 0.5})
    context = _context(cfg, {})
    rt = NodeRuntime.from_context(context)
    client = rt.split_client(0, context.state)
    assert client.training_labels is not None
    # Every epoch reads the same noisy label per sample (no fresh draw to average out).
    again = NodeRuntime.from_context(context).split_client(0, context.state)
    assert np.array_equal(client.training_labels, again.training_labels)
    true = rt.train_set().labels[client.partition]
    assert (client.training_labels != true).mean() > 0.5  # eps=0.5, 10 classes: p ~ 0.15
    # Another node (another secret) draws other noise; a fixed node seed reproduces.
    other = _context(cfg, {})
    other_labels = NodeRuntime.from_context(other).split_client(0, other.state).training_labels
    assert not np.array_equal(client.training_labels, other_labels)
    seeded = [_context(cfg, {"label-dp-seed": 7}) for _ in range(2)]
    fixed = [NodeRuntime.from_context(c).split_client(0, c.state).training_labels for c in seeded]
    assert np.array_equal(fixed[0], fixed[1])
    # The secret stays in the node's state: query.state does not send it.
    msg = LocalGrid(client_app, 1, cfg.to_mapping()).create_message(
        P.clients_request([0]), P.QUERY_STATE, 1000, "e0state"
    )
    from clients.mpsl import query_state

    reply = query_state(msg, context)
    assert LABEL_SECRET_KEY in context.state
    assert not any("secret" in key or "label-dp" in key for key in reply.content)


# ------------------------------------------------------------------ client tail
def test_client_tail_with_one_client_equals_centralized_bit_for_bit(tmp_path):
    cfg = _cfg(tmp_path, epochs=2, **{"label-privacy": "client-tail"})
    mpsl = MPSL(Experiment.from_config(cfg)).start(LocalGrid(client_app, 1, cfg.to_mapping()))
    central = Centralized(Experiment.from_config(cfg.replace(label_privacy="none"))).start()
    a, b = mpsl.arrays.to_torch_state_dict(), central.arrays.to_torch_state_dict()
    moved = {"head.classifier.weight": "server.tail.fc.weight",
             "head.classifier.bias": "server.tail.fc.bias"}  # fmt: skip
    assert {moved.get(k, k) for k in a} == set(b)
    for k in a:
        assert torch.equal(a[k], b[moved.get(k, k)]), k


def test_no_label_shaped_tensor_reaches_the_server_under_client_tail(tmp_path):
    cfg = _cfg(tmp_path, **{"label-privacy": "client-tail"})
    classes = Experiment.from_config(cfg).info.num_classes
    local = LocalGrid(client_app, NODES, cfg.to_mapping())
    grid = RecordingGrid(local, epochs={0}, steps=1)  # every leg of the first step
    MPSL(Experiment.from_config(cfg)).start(grid)
    replies = [m for m in grid.received if m.step == 0]
    assert {m.message_type for m in replies} >= {P.FORWARD, P.LOSS, P.BACKWARD}
    shapes = [
        tuple(array.shape)
        for m in replies
        for record in m.content.values()
        if isinstance(record, ArrayRecord)
        for array in record.values()
    ]
    assert shapes and all(s[-1] != classes for s in shapes), shapes
    width = Experiment.from_config(cfg).spec.width
    loss = [s for m in replies if m.message_type == P.LOSS for s in _array_shapes(m.content)]
    assert loss and all(s[1:] == (width,) for s in loss)  # dL/de at the pooled embedding


def _array_shapes(content: RecordDict) -> list[tuple[int, ...]]:
    return [
        tuple(a.shape) for r in content.values() if isinstance(r, ArrayRecord) for a in r.values()
    ]


def test_client_tail_alone_falls_to_the_known_tail_inversion(tmp_path):
    cfg = _cfg(tmp_path, **{"label-privacy": "client-tail"})
    run = recorded_run(cfg, NODES, [1], steps=1000)
    oracle = LabelOracle(cfg.data, NODES, cfg.seed)
    rows = run_attacks(run, oracle, Experiment.from_config(cfg).info.num_classes, cfg.seed)
    by_name = {(r.attack, r.target.split()[0]): r for r in rows}
    assert by_name[("gradient-sign", "train.loss")].recovery_rate is None  # not logits
    inversion = by_name[("known-tail-inversion", "train.loss")]
    assert inversion.samples == cfg.synthetic_train_size
    assert inversion.recovery_rate is not None and inversion.recovery_rate >= 0.99


# ------------------------------------------------------------------ label-dp
def test_label_dp_recovery_stays_under_its_bound(tmp_path):
    """Small epsilon, fixed node seeds (``recorded_run``): every attack's recovery is at
    most the bound for an attacker who knows each client's label histogram, plus three
    binomial standard deviations; the plain gradient-sign attack recovers about ``p``."""
    eps = 0.5
    cfg = _cfg(
        tmp_path,
        **{"label-privacy": "label-dp", "label-epsilon": eps, "dirichlet-alpha": 100.0},
    )
    run = recorded_run(cfg, NODES, [1], steps=1000)
    classes = Experiment.from_config(cfg).info.num_classes
    rr = RandomizedResponse(eps, classes)
    rows = run_attacks(run, LabelOracle(cfg.data, NODES, cfg.seed), classes, cfg.seed, rr)
    best = best_attack(rows)
    n = best.samples
    assert n == cfg.synthetic_train_size and best.bound is not None
    margin = 3 * math.sqrt(best.bound * (1 - best.bound) / n)
    for r in rows:
        if r.recovery_rate is not None:
            assert r.bound == best.bound
            assert r.recovery_rate <= r.bound + margin, r
    sign = next(r for r in rows if r.attack == "gradient-sign")
    p = rr.keep_probability
    assert abs((sign.recovery_rate or 0.0) - p) <= 3 * math.sqrt(p * (1 - p) / n)
    # Without the defence the same attack takes every label.
    plain = recorded_run(cfg.replace(label_privacy="none"), NODES, [1], steps=1000)
    oracle = LabelOracle(cfg.data, NODES, cfg.seed)
    undefended = run_attacks(plain, oracle, classes, cfg.seed)
    assert next(r for r in undefended if r.attack == "gradient-sign").recovery_rate == 1.0


def test_prior_decoding_reaches_the_bound_on_skewed_clients():
    rr = RandomizedResponse(epsilon=1.0, num_classes=10)
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 5000)
    y = np.where(rng.random(groups.size) < 0.8, groups, rng.integers(0, 10, groups.size))
    r = rr.noisy(y, rng)
    decoded = attacks.prior_decoding(r, groups, rr.keep_probability, 10)
    bound = np.mean(
        [rr.attack_bound(np.bincount(y[groups == g], minlength=10) / 5000) for g in range(4)]
    )
    assert attacks.recovery_rate(r, y) == pytest.approx(rr.keep_probability, abs=0.02)
    assert attacks.recovery_rate(decoded, y) == pytest.approx(bound, abs=0.02)
    assert attacks.recovery_rate(decoded, y) > attacks.recovery_rate(r, y) + 0.3


# ------------------------------------------------------------------ the sweep
def test_privacy_frontier_writes_table_plot_and_continues_where_it_stopped(tmp_path, capsys):
    from mpsl_flwr import cli

    tiny = " ".join(f"{k}={str(v).lower()}" for k, v in TINY.items())
    out = tmp_path / "frontier"
    argv = ["--nodes", str(NODES), "--tasks", "synthetic-vqa", "--seeds", "0", "--steps", "1"]
    argv += ["--out", str(out), "--run-config", tiny]
    assert cli.privacy_frontier([*argv, "--settings", "none"]) == 0
    assert len((out / "runs.jsonl").read_text().splitlines()) == 1
    assert cli.privacy_frontier([*argv, "--settings", "none", "client-tail+label-dp"]) == 0
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2  # none kept, then the one client-tail+label-dp setting
    table = (out / "frontier.md").read_text()
    both = "client-tail+label-dp eps=2"
    assert "| synthetic-vqa | none |" in table and f"| synthetic-vqa | {both} |" in table
    assert (out / "frontier.png").stat().st_size > 10_000
    rows = list(csv.DictReader((out / "frontier.csv").open()))
    none = next(r for r in rows if r["setting"] == "none")
    assert float(none["best-attack-recovery"]) == 1.0 and none["bound"] == ""
    dp = next(r for r in rows if r["setting"] == both)
    assert float(dp["best-attack-recovery"]) < 1.0 and 0 < float(dp["bound"]) < 1
    assert both in capsys.readouterr().out
