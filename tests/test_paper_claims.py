"""mpsl-paper-claims: the verdict rules, the report rendering and one real tiny run."""

from __future__ import annotations

import json

import pytest

from mpsl_flwr.cli import paper_claims as cli
from mpsl_flwr.config import parse_overrides, resolve_config
from mpsl_flwr.tools import paper_claims as pc
from mpsl_flwr.tools.paper_claims import FAILS, HOLDS, UNMEASURABLE


def test_matches_within_twice_the_pooled_std_or_the_floor():
    assert pc.matches([0.50, 0.52, 0.54], [0.60, 0.62, 0.64]) is False  # 0.10 apart, std 0.016
    assert pc.matches([0.40, 0.50, 0.60], [0.50, 0.60, 0.70])  # 0.10 apart, std 0.08
    assert pc.matches([0.50], [0.519])  # one seed: the 0.02 floor
    assert not pc.matches([0.50], [0.53])


def test_matches_or_beats_forgives_a_higher_mpsl_only():
    assert pc.matches_or_beats([0.70], [0.50])
    assert not pc.matches_or_beats([0.50], [0.70])


def test_beats_needs_more_than_the_larger_std():
    assert pc.beats([0.6, 0.7, 0.8], [0.3, 0.35, 0.4])  # 0.40 > 0.082
    assert not pc.beats([0.4, 0.7, 1.0], [0.4, 0.5, 0.6])  # 0.20 < 0.245
    assert not pc.beats([0.5], [0.5])
    assert pc.beats([0.51], [0.5])


def test_fewer_rounds_is_strict():
    assert pc.fewer_rounds([2, 3, 2], [4, 4, 5])
    assert not pc.fewer_rounds([3, 3], [3, 3])
    assert not pc.fewer_rounds([5], [3])


def test_within_factor_and_flat():
    assert pc.within_factor(0.76e6, 1.0e6) and pc.within_factor(164, 250)
    assert not pc.within_factor(100, 250) and not pc.within_factor(600, 250)
    assert pc.flat([10.0, 10.5, 11.0]) and not pc.flat([10.0, 20.0])


def test_robust_and_learned():
    assert pc.robust({50: [0.60, 0.62], 500: [0.61, 0.60]})
    assert not pc.robust({50: [0.70, 0.71], 500: [0.40, 0.41]})
    assert not pc.learned([[0.10, 0.11], [0.105]], chance=0.1)
    assert pc.learned([[0.10], [0.30]], chance=0.1)
    assert pc.learned([[0.0]], chance=None)  # retrieval: no single chance figure


def test_retrieval_chance_is_a_random_ranking():
    assert pc.retrieval_chance(64) == pytest.approx(2 * (1 + 5 + 10) / 64)
    assert pc.retrieval_chance(5) == pytest.approx(2 * (1 / 5 + 1 + 1))  # R@k capped at 1


def fake_group(finals, metric="test-accuracy", chance=0.1, epochs=3):
    """A Group as run_group returns it: per strategy per-seed finals and flat curves; a
    strategy with no finals (its runs failed) is absent, as compare.summarise leaves it."""
    finals = {s: v for s, v in finals.items() if v}
    curves = {
        s: {"metric": metric, "chance": chance, "curves": [[f] * epochs for f in v]}
        for s, v in finals.items()
    }
    return pc.Group(metric, chance, finals, curves, [], "mpsl-compare ...")


def setup(tmp_path, **kwargs):
    values = {
        "seeds": [0, 1, 2],
        "nodes": 2,
        "base": {},
        "out": tmp_path,
        "runs": tmp_path / "runs",
        "timeout": 60.0,
        "clients": [2, 4],
        "batch_sizes": [50, 500],
        "min_steps": 1,
        "sizes": ["tiny", "small"],
    }
    return pc.Setup(**{**values, **kwargs})


@pytest.mark.parametrize(
    ("mpsl", "fedavg", "verdict"),
    [
        ([0.60, 0.61, 0.62], [0.60, 0.62, 0.61], HOLDS),  # matches
        ([0.80, 0.81, 0.82], [0.60, 0.61, 0.62], HOLDS),  # higher
        ([0.40, 0.41, 0.42], [0.60, 0.61, 0.62], FAILS),  # lower
        ([0.10, 0.10, 0.11], [0.10, 0.11, 0.10], UNMEASURABLE),  # both at chance
        ([], [0.60, 0.61, 0.62], UNMEASURABLE),  # MPSL's runs failed
    ],
)
def test_claim_1_verdicts_from_its_runs(tmp_path, monkeypatch, mpsl, fedavg, verdict):
    monkeypatch.setattr(
        pc, "run_group", lambda *a, **k: fake_group({"mpsl": mpsl, "fedavg": fedavg})
    )
    claim = pc.claim_1(setup(tmp_path))
    assert claim.verdict == verdict, claim.measured
    if not mpsl:
        assert "run failed" in claim.measured


@pytest.mark.parametrize(
    ("mpsl", "verdict"),
    [([2.0, 2.1, 2.2], HOLDS), ([1.0, 1.1, 1.2], FAILS), ([0.5, 0.51, 0.52], UNMEASURABLE)],
)
def test_claim_2_needs_mpsl_to_beat_both_baselines_above_chance(
    tmp_path, monkeypatch, mpsl, verdict
):
    finals = {"mpsl": mpsl, "fedavg": [1.0, 1.1, 1.2], "fedclip": [0.9, 1.0, 1.1]}
    if verdict == UNMEASURABLE:
        finals = {s: [0.5, 0.51, 0.52] for s in finals}
    group = fake_group(finals, metric="test-rsum", chance=pc.retrieval_chance(64))
    monkeypatch.setattr(pc, "run_group", lambda *a, **k: group)
    assert pc.claim_2(setup(tmp_path)).verdict == verdict


def test_claim_4_counts_rounds_to_95_percent_of_peak(tmp_path, monkeypatch):
    fast = [[0.5, 0.6, 0.6]] * 3  # 95% of the peak at round 2
    slow = [[0.3, 0.5, 0.6]] * 3  # at round 3
    group = fake_group({"mpsl": [0.6] * 3, "fedavg": [0.6] * 3})
    group.curves["mpsl"]["curves"], group.curves["fedavg"]["curves"] = fast, slow
    monkeypatch.setattr(pc, "run_group", lambda *a, **k: group)
    assert pc.claim_4(setup(tmp_path)).verdict == HOLDS
    group.curves["mpsl"]["curves"], group.curves["fedavg"]["curves"] = slow, fast
    assert pc.claim_4(setup(tmp_path)).verdict == FAILS


def test_claim_1_refuses_a_client_count_the_nodes_cannot_split(tmp_path, monkeypatch):
    monkeypatch.setattr(
        pc, "run_group", lambda *a, **k: fake_group({"mpsl": [0.6], "fedavg": [0.6]})
    )
    claim = pc.claim_1(setup(tmp_path, clients=[3]))
    assert claim.verdict == UNMEASURABLE and "not a multiple" in claim.measured


@pytest.mark.parametrize(
    ("by_batch", "verdict"),
    [({50: [0.6, 0.61], 500: [0.6, 0.62]}, HOLDS), ({50: [0.7, 0.71], 500: [0.4, 0.41]}, FAILS)],
)
def test_claim_6_robust_to_the_global_batch(tmp_path, monkeypatch, by_batch, verdict):
    def group(ctx, name, strategies, keys):
        return fake_group({"mpsl": by_batch[keys["batch-size"]]})

    monkeypatch.setattr(pc, "run_group", group)
    claim = pc.claim_6(setup(tmp_path, base={"synthetic-train-size": 100}))
    assert claim.verdict == verdict, claim.measured
    assert claim.figures["train-size"] == 500  # max(100, 500 x 1 step)


@pytest.mark.parametrize(
    ("results", "verdict"),
    [
        ([True, True], HOLDS),
        ([True, False], FAILS),
        ([None, False], FAILS),
        ([True, None], UNMEASURABLE),
        ([], UNMEASURABLE),
    ],
)
def test_combine_reaches_every_verdict(results, verdict):
    assert pc.combine(results) == verdict


def test_markdown_has_one_row_per_claim_its_rules_and_commands():
    claims = [
        pc.Claim(1, "parity", "MPSL matches FedAvg.", "matches", "0.5 vs 0.5", HOLDS).as_dict(),
        pc.Claim(
            2, "retrieval | R@1", "MPSL beats FL.", "beats", "0.2 vs 0.4", FAILS, ["mpsl-x a|b"]
        ).as_dict(),
        pc.Claim(6, "batch", "robust", "robust to B", "run failed: boom").as_dict(),
    ]
    text = pc.render_markdown(claims, {"seeds": [0], "nodes": 2, "run-config": "epochs=1"})
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 3  # the header and one row per claim
    assert "**holds**" in rows[1] and "**does not hold**" in rows[2]
    assert "**not measurable here**" in rows[3] and "run failed: boom" in rows[3]
    assert "retrieval \\| R@1" in rows[2]  # a pipe in a cell does not split the row
    for rule in pc.RULES.values():
        assert rule in text
    assert "mpsl-x a|b" in text  # commands verbatim in their code block


def test_run_config_text_round_trips_through_the_flower_parser():
    values = {"dataset": "synthetic-vqa", "epochs": 2, "progress": False, "pretrained": "/a b.pt"}
    assert parse_overrides([pc.run_config_text(values)]) == values


def test_the_example_script_run_config_is_valid():
    from mpsl_flwr.project import PROJECT_DIR

    line = next(
        line
        for line in (PROJECT_DIR / "examples" / "paper_claims.sh").read_text().splitlines()
        if line.startswith("RUN_CONFIG=")
    )
    resolve_config(parse_overrides([line.split("=", 1)[1].strip('"')]))


def test_costs_of_a_global_batch_larger_than_the_test_split():
    """Claim 3 counts the server step at the global batch: a run config with a small
    synthetic test split (as tiny runs have) must not make it fail."""
    from mpsl_flwr.tools.cost_table import cost_rows

    cfg = resolve_config({"encoder-depth": 1, "synthetic-test-size": 8, "batch-size": 32})
    rows = cost_rows(cfg, ["tiny"], ["mpsl"], 2)
    assert rows[0]["client-params"] > 0


def test_cli_refuses_unknown_claims_and_bad_run_configs_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["--only", "7"])
    with pytest.raises(SystemExit) as done:
        cli(["--only", "1", "--run-config", "seed=-1", "--runs-dir", str(tmp_path)])
    assert done.value.code == 2
    assert "mpsl-paper-claims: error: Run-config key 'seed'" in capsys.readouterr().err
    assert not (tmp_path / "claim1-n10").exists()


@pytest.mark.e2e
def test_a_real_tiny_run_of_claims_3_and_6(tmp_path):
    """Claim 3 from the cost code and claim 6 at one batch size: one real ``flwr run``
    through compare.run_all, 2 nodes, 1 seed, 1 epoch."""
    out = tmp_path / "claims"
    run_config = (
        "encoder-depth=1 synthetic-train-size=64 synthetic-test-size=32 epochs=1 "
        "checkpoint-every=0 progress=false eval-batch-size=64"
    )
    cli(
        [
            "--only", "3,6", "--seeds", "0", "--nodes", "2", "--batch-sizes", "16",
            "--min-steps", "1", "--run-config", run_config, "--out", str(out),
            "--runs-dir", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    report = json.loads((out / "claims.json").read_text())
    by = {c["claim"]: c for c in report["claims"]}
    assert sorted(by) == [3, 6]
    assert all(c["verdict"] in pc.VERDICTS for c in by.values())
    assert by[3]["verdict"] == HOLDS  # ViT-B at 224 px: ~0.76 M vs ~86 M, ~164x
    assert by[3]["figures"]["mpsl"]["client-params"] < 2e6
    # One epoch on 64 samples may learn nothing: any verdict, but the run itself worked.
    assert "run failed" not in by[6]["measured"], by[6]["measured"]
    assert len(by[6]["figures"]["by-batch"]["16"]) == 1  # one seed (JSON keys are text)
    assert "mpsl-compare --strategies mpsl --seeds 0 --nodes 2" in by[6]["commands"][0]
    text = (out / "paper-claims.md").read_text()
    assert "| 3 |" in text and "| 6 |" in text
    assert (tmp_path / "runs" / "claim6-b16" / "runs" / "mpsl-s0" / "summary.json").exists()
    assert not (out / "claim6-b16").exists()  # run files stay out of the report folder
