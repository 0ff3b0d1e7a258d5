"""benchmarks/aggregate.py runs end to end and reports every figure the README quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "aggregate.py"
KEYS = {
    "fedavg_gbps",
    "mean_gbps",
    "fedavg_files_gbps",
    "read_gbps",
    "read_all_gbps",
    "files_read_gbps",
    "files_read_all_gbps",
    "fedavg_ratio_vs_read_all",
    "mean_ratio_vs_read_all",
    "fedavg_files_ratio_vs_read_all",
    "fedavg_ratio_vs_read_all_cpu",
    "mean_ratio_vs_read_all_cpu",
    "fedavg_files_ratio_vs_read_all_cpu",
    "flower_gbps",
    "fma_gbps",
    "ratio_vs_flower",
    "ratio_vs_fma",
    "deltas_shared_base_gbps",
    "deltas_base_per_delta_gbps",
    "ratio_shared_base",
    "files_plain_gbps",
    "files_measured_gbps",
    "ratio_measured",
    "peak_extra_bytes",
    "model_bytes",
}
STATE_TENSORS = {"fedavgm": 1, "fedadam": 2, "fedyogi": 2, "fedadagrad": 2}
ROBUST = (7, 11)
ROBUST_KEYS = {
    f"{rule}_n{count}_{figure}"
    for count in ROBUST
    for rule in ("krum", "bulyan", "flower_krum", "flower_bulyan")
    for figure in ("gbps", "peak_bytes")
} | {f"{rule}_n{count}_ratio_vs_flower" for count in ROBUST for rule in ("krum", "bulyan")}
OPTIMIZER_KEYS = {
    f"{name}_{figure}"
    for name in STATE_TENSORS
    for figure in (
        "ratio_vs_fedavg",
        "ratio_vs_read_all",
        "ratio_vs_read_all_cpu",
        "peak_extra_bytes",
        "state_bytes",
    )
}


def test_json_output_has_every_key_with_sane_values():
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARK),
            *("--updates", "4", "--params", "20000", "--repeat", "1", "--json"),
            *("--robust-updates", ",".join(map(str, ROBUST)), "--robust-params", "3000"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert set(figures) >= KEYS | OPTIMIZER_KEYS | ROBUST_KEYS
    assert figures["model_bytes"] == 20000 * 4
    assert all(figures[key] > 0 for key in KEYS | OPTIMIZER_KEYS | ROBUST_KEYS)
    assert [figures[f"robust_n{n}_f"] for n in ROBUST] == [1, 2]  # ⌊(N − 3)/4⌋: Bulyan's most
    assert all(figures[f"robust_n{n}_model_bytes"] == 3000 * 4 for n in ROBUST)
    assert figures["flower_bulyan_n7_params"] == 3000  # up to 20 updates, on all the parameters
    for name, count in STATE_TENSORS.items():
        assert figures[f"{name}_state_bytes"] == count * figures["model_bytes"]
    # each ratio is to the all-core read of the same bytes from the same place, and comes from the
    # unrounded rates; the printed rates keep 4 significant digits
    for name, floor in (("fedavg", "read_all"), ("mean", "read_all"), ("fedavg_files", "files_read_all")):
        assert figures[f"{name}_ratio_vs_read_all"] == pytest.approx(
            figures[f"{name}_gbps"] / figures[f"{floor}_gbps"], rel=2e-3
        )


def test_table_output_names_every_baseline():
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARK),
            "--updates",
            "3",
            "--params",
            "1000",
            "--repeat",
            "1",
            "--robust-updates",
            "7",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    labels = (
        "fma-core fedavg",
        "fma-core mean",
        "as deltas",
        "read floor: a.sum() of each block, 1 thread",
        "files read floor: preadv + a.sum()",
        "-thread read",
        "per CPU second",
        "Flower",
        "original FMA",
        "peak extra memory",
        "norm/cosine/distance",
        "robust rules",
    )
    for label in (*labels, *STATE_TENSORS, "krum", "Flower krum", "bulyan", "Flower bulyan"):
        assert label in result.stdout


def test_too_few_updates_for_bulyan_are_refused():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--updates", "3", "--params", "1000", "--robust-updates", "6"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "bulyan with f = 1 needs at least 7 updates" in result.stderr
