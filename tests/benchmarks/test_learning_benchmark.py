"""benchmarks/learning.py runs end to end and reports a row per strategy and α, and centralized; under
attack (``--attacks``), a row per strategy and scenario with its gap to a clean run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "learning.py"


def run(*options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--rounds", "2", *options],
        capture_output=True,
        text=True,
        check=True,
    )


def test_json_output_has_a_row_per_strategy_and_alpha():
    figures = json.loads(run("--strategies", "fedavg", "trimmed_mean", "--json").stdout)
    rows = {(row["strategy"], row["alpha"]): row for row in figures["rows"]}
    assert set(rows) == {(s, a) for s in ("fedavg", "trimmed_mean", "centralized") for a in (0.5, 0.1)}
    for (strategy, _), row in rows.items():
        assert len(row["final"]) == 1  # --quick: one seed
        assert 0.0 <= row["mean"] <= 1.0
        assert row["sd"] == 0.0
        if strategy == "centralized":
            assert (row["reached_90"], row["rounds_to_90"]) == (None, None)
        else:
            assert row["reached_90"] in ("0/1", "1/1")
            assert (row["rounds_to_90"] is None) == (row["reached_90"] == "0/1")
    assert rows[("trimmed_mean", 0.1)]["params"] == {"trim_fraction": 0.1}  # --quick: the grid's first
    assert rows[("centralized", 0.5)]["params"] == {"epochs": 2 * 5}
    assert set(figures["tuning"]) == {"fedavg", "trimmed_mean"}
    assert figures["tuning_seeds"] == [1]  # never the evaluation seed
    assert set(figures) >= {"best_at_0.5", "best_at_0.1", "setting", "date"}
    assert "live" not in figures


def test_table_names_every_strategy_and_leaves_out_unknown_ones():
    stdout = run("--strategies", "median", "no_such_strategy").stdout
    assert "left out: no_such_strategy" in stdout
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines] == ["strategy", "median", "centralized"]


def test_under_attack_each_strategy_has_a_row_per_scenario_and_a_gap_to_the_clean_run():
    figures = json.loads(
        run(
            "--attacks",
            "--strategies", "fedavg", "fedavg+refuse", "no_such_strategy",
            "--scenarios", "noise:2", "signflip:1",
            "--json",
        ).stdout
    )  # fmt: skip
    rows = {(row["strategy"], row["scenario"]): row for row in figures["rows"]}
    assert set(rows) == {(s, a) for s in ("fedavg", "fedavg+refuse") for a in ("noise:2", "signflip:1")}
    assert figures["left_out"] == ["no_such_strategy"]
    assert figures["setting"]["clients"] == 15
    clean = figures["clean"]["mean"]
    for row in rows.values():
        assert len(row["final"]) == 1  # --quick: one seed
        assert row["points_below_clean"] == pytest.approx((clean - row["mean"]) * 100)
    assert rows[("fedavg+refuse", "noise:2")]["update_norm"] == {"mode": "refuse", "adaptive": {}}
    assert rows[("fedavg", "noise:2")]["update_norm"] is None
    # two of fifteen pushing noise wreck fedavg within two rounds; refusing their long changes does not
    assert rows[("fedavg+refuse", "noise:2")]["mean"] > rows[("fedavg", "noise:2")]["mean"] + 0.2
    assert figures["best"]["noise:2"]["strategy"] == "fedavg+refuse"


def test_with_privacy_each_epsilon_has_a_row_whose_ledger_stays_within_it():
    figures = json.loads(run("--privacy", "--clients", "20", "--epsilons", "8", "--json").stdout)
    without, private = figures["rows"]
    assert without["privacy"] is None
    assert private["target_epsilon"] == 8
    assert private["privacy"]["expected_clients"] == 20
    assert 7.9 < private["epsilon_spent"] <= 8  # the noise is calibrated to spend the budget in 2 rounds
    assert private["points_below_without"] == pytest.approx((without["mean"] - private["mean"]) * 100)
    assert figures["setting"]["clients"] == 20
