"""benchmarks/secagg.py runs end to end at a tiny size and reports every figure as a ratio to plain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "secagg.py"


def test_json_output_has_each_figure_and_the_unmasked_mean_within_the_step():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--clients", "5", "12", "--params", "3000", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert [r["clients"] for r in figures["rows"]] == [5, 12]
    for row in figures["rows"]:
        assert row["dropped"] == row["clients"] // 10
        for figure in ("client_seconds", "server_seconds", "bytes_per_client"):
            assert row["ratio"][figure] == pytest.approx(row["secure"][figure] / row["plain"][figure])
        assert row["secure"]["bytes_per_client"] > 2 * 3000 * 4  # uint64 elements: twice float32
        assert row["max_abs_error"] <= row["quantization_step"]
    assert figures["load_average"] >= 0
