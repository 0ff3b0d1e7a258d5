"""benchmarks/async_learning.py runs end to end: a row for sync FedAvg and each asynchronous mode, their
times to 90 % on the simulated clock, with the ratio to sync."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "async_learning.py"


def test_quick_run_reports_sync_and_each_asynchronous_mode():
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--json"], capture_output=True, text=True, check=True
    )
    figures = json.loads(done.stdout)
    rows = {row["mode"]: row for row in figures["rows"]}
    assert next(iter(rows)) == "sync fedavg"
    assert rows["sync fedavg"]["rounds"] == 6  # --quick: 6 sync rounds, each as long as a slow client
    assert figures["setting"]["time_budget"] == 6 * 5
    assert rows["sync fedavg"]["time_to_90_vs_sync"] in (None, 1.0)
    for name, row in rows.items():
        assert len(row["final"]) == 1
        assert 0.0 <= row["mean"] <= 1.0
        if name != "sync fedavg":
            assert row["asynchronous"]["buffer"] in (5, 10)
            # in the same time the fast clients make many more rounds than sync's
            assert row["rounds"] > rows["sync fedavg"]["rounds"]
