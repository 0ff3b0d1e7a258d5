"""benchmarks/scale.py runs each mode's ``--quick`` form end to end and reports what it promises:
ratios to baselines of the same run, exactly-once on the results, and claim / commit statements
that do not grow with the round (no query per update)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "scale.py"


def scale(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), *args, "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_round_size_claims_and_commits_every_update_in_statements_that_do_not_grow_per_update():
    figures = scale("--round-size")["round_size"]
    rounds = figures["rounds"]
    assert [r["claimed"] for r in rounds] == [r["updates"] for r in rounds]
    assert [r["consumed"] for r in rounds] == [r["updates"] for r in rounds]
    assert len({r["claim_statements"] for r in rounds}) == 1
    assert len({r["lineage_statements"] for r in rounds}) == 1
    for row in rounds:  # SQLite takes at most 999 parameters a statement: one UPDATE per 497 updates
        assert row["commit_statements"] <= rounds[0]["commit_statements"] + row["updates"] // 497 + 1
        for stage in (
            "claim",
            "commit",
            "lineage",
            "ready_check_short_of_count",
            "ready_check_short_of_clients",
        ):
            assert row[f"{stage}_ratio_to_read"] > 0
    assert figures["claim_growth_per_update"] > 0
    assert figures["loadavg"]


def test_clients_pushes_every_update_once_with_no_error_and_a_ratio_to_the_servers_floor():
    figures = scale("--clients")["clients"]
    (run,) = figures["runs"]
    assert run["errors"] == 0, run["first_errors"]
    assert run["exactly_once"]["holds"], run["exactly_once"]
    assert run["exactly_once"]["accepted"] == run["round_size"]
    assert run["ratio_to_floor"] > 0
    assert run["p99_seconds"] >= run["p50_seconds"] > 0
    assert figures["fd_limit"] >= figures["fd_limit_before"]


def test_large_pushes_aggregates_and_pulls_the_model_and_compares_each_stage_with_the_disk():
    figures = scale("--large")["large"]
    assert figures["round_outcome"] == "committed"
    assert figures["pulled_params"] == figures["params"]
    assert figures["exactly_once"]["holds"], figures["exactly_once"]
    assert set(figures["stages"]) == {"push", "round", "pull"}
    assert all(stage["ratio_to_disk"] > 0 for stage in figures["stages"].values())
    push = figures["stages"]["push"]
    if push["disk_written_bytes"] is not None:  # a block device to ask: every part reached it (fsync)
        assert push["disk_written_bytes"] >= figures["clients"] * figures["model_bytes"]
    assert set(figures["peak_rss_over_model"]) == {"server", "aggregator", "client_process"}
    assert figures["disk"]["write_gbps"] > 0
    assert figures["disk"]["read_gbps"] > 0
