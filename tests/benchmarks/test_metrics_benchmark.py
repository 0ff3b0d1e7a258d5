"""benchmarks/metrics.py runs end to end at a tiny size (two real fma-servers) and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "metrics.py"
KINDS = ("healthz", "list_experiments", "push")


def test_json_output_compares_every_kind_of_request_and_sizes_a_scrape():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--requests", "3", "--scrapes", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert figures["requests"] == 3
    for kind in KINDS:
        row = figures[kind]
        assert row["with_us"] > 0
        assert row["without_us"] > 0
        assert row["added_us"] == pytest.approx(row["with_us"] - row["without_us"], abs=0.2)
        assert row["ratio"] == pytest.approx(row["with_us"] / row["without_us"], abs=0.002)
    row = figures["in_process"]
    assert row["with_us"] > 0
    assert row["without_us"] > 0
    assert row["added_us"] == pytest.approx(row["with_us"] - row["without_us"], abs=0.2)
    assert row["record_us"] > 0
    assert figures["scrape_ms"] > 0
    assert figures["scrape_bytes"] > 1000  # every metric family, not an empty page
