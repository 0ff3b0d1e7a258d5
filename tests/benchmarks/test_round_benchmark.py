"""benchmarks/round.py runs end to end (PostgreSQL, local weights, live Celery workers) and reports every key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..aggregator.aggregator_support import service_available

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "round.py"
KEYS = {
    "round_seconds",
    "round_gbps",
    "peak_rss_bytes",
    "model_bytes",
    "speedup_2_workers",
    "files_read_gbps",
    "files_read_all_gbps",
    "round_ratio_vs_read_all",
    "engine_ratio_vs_read_all",
    "files_fedavg_gbps",
    "files_fedavg_ratio_vs_read_all",
    "files_fedavg_ratio_vs_read_all_cpu",
}


@pytest.fixture
def services() -> None:
    for name, port in (("PostgreSQL", 5432), ("Redis", 6379)):
        service_available("127.0.0.1", port, name)


def test_json_output_has_every_key_with_sane_values(services):
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--updates", "4", "--params", "40000", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert set(figures) >= KEYS
    assert figures["model_bytes"] == 40000 * 4
    assert all(figures[key] > 0 for key in KEYS)
    assert figures["bit_identical"] is True
    # the figures are rounded to 3 decimals, so compare loosely
    assert figures["round_gbps"] == pytest.approx(
        4 * figures["model_bytes"] / figures["round_seconds"] / 1e9, abs=0.002
    )
    # the round against the read floor of the same files, measured in the same run
    round_rate = 4 * figures["model_bytes"] / figures["round_seconds"] / 1e9
    assert figures["round_ratio_vs_read_all"] == pytest.approx(
        round_rate / figures["files_read_all_gbps"], rel=0.05
    )
    # where the sharded rounds' time went, read back from the workers' logs
    for workers in ("stages_1_worker", "stages_2_workers"):
        stage = figures[workers]
        assert stage["run_round"] > 0
        assert stage["shards"] > 0
        assert stage["combine"] > 0
    assert 0 < figures["serial_fraction_1_worker"] < 1
    assert figures["speedup_bound_2_workers"] >= 1
