"""benchmarks/kernel_bounds.py runs end to end and reports every kernel on one thread and on two."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "kernel_bounds.py"
KERNELS = ("sum", "max", "add", "muladd", "saxpy_fma")


def test_json_output_has_every_kernel_with_sane_values():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--updates", "3", "--params", "70000", "--repeat", "1", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert (figures["updates"], figures["params"]) == (3, 70000)
    for kernel in KERNELS:
        for threads in (1, 2):
            key = f"{kernel}_t{threads}"
            for figure in ("gbps", "cpu_gbps", "ratio_vs_sum_t2", "cpu_ratio_vs_sum"):
                assert figures[f"{key}_{figure}"] > 0, (key, figure)
    assert figures["sum_t2_ratio_vs_sum_t2"] == 1
    assert figures["sum_t1_cpu_ratio_vs_sum"] == 1


def test_table_names_every_kernel():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--updates", "2", "--params", "2000", "--repeat", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    for kernel in KERNELS:
        assert f"{kernel}_t1" in result.stdout
        assert f"{kernel}_t2" in result.stdout


def test_fewer_than_two_updates_are_refused():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--updates", "1"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "--updates must be at least 2" in result.stderr
