"""benchmarks/s3_transfer.py runs end to end (SeaweedFS's S3 gateway, or moto's server, and two live
services) and reports every key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "s3_transfer.py"
RATIOS = {"upload_ratio", "aggregate_ratio", "download_ratio", "round_read_ratio", "round_floor_ratio"}
RATES = {
    "presigned_upload_mbps",
    "api_upload_mbps",
    "aggregate_from_s3_gbps",
    "aggregate_local_gbps",
    "download_mbps",
    "api_download_mbps",
    "plain_read_gbps",
    "plain_write_gbps",
}
SIZES = {"aggregator_peak_rss_bytes", "aggregator_local_peak_rss_bytes", "model_bytes", "rss_target_bytes"}


@pytest.mark.parametrize("server", ["seaweedfs", pytest.param("moto", marks=pytest.mark.moto_s3)])
def test_json_output_has_every_key_with_sane_values(server, weed):
    """The benchmark starts its own SeaweedFS (``weed``: skips, or fails under CI, without the binary)."""
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARK),
            "--updates",
            "2",
            "--params",
            "100000",
            "--server",
            server,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert set(figures) >= RATES | RATIOS | SIZES | {"rss_target_met", "bit_identical"}
    assert all(figures[key] > 0 for key in RATES | RATIOS | SIZES)
    assert figures["model_bytes"] == 100000 * 4
    assert figures["rss_target_bytes"] == 2 * figures["model_bytes"] + 300 * 1024**2
    assert figures["rss_target_met"] is True
    assert figures["bit_identical"] is True
    assert figures["server"] == server
    assert figures["round_read_target_met"] is (figures["round_read_ratio"] >= 0.5)
    # the floor (the updates read and one model written at the plain rates) over the round's time
    assert figures["round_floor_ratio"] == pytest.approx(
        figures["round_floor_seconds"] / figures["round_seconds"], abs=0.001
    )
    # the ratios come from the unrounded times, the rates keep one decimal: each rate is within 0.05 of
    # the unrounded one (on a busy machine rates are small, and the rounding weighs)
    for ratio, s3, api in (
        ("upload_ratio", "presigned_upload_mbps", "api_upload_mbps"),
        ("download_ratio", "download_mbps", "api_download_mbps"),
    ):
        low = (figures[s3] - 0.05) / (figures[api] + 0.05)
        high = (figures[s3] + 0.05) / (figures[api] - 0.05)
        assert low * 0.999 <= figures[ratio] <= high * 1.001
    # a peak below 20 MB would mean the child's memory was not read (Python and Django alone weigh more)
    assert figures["aggregator_peak_rss_bytes"] > 20 * 10**6


def test_rejects_a_parameter_count_the_tensors_cannot_share():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--params", "1001"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "multiple of 10" in result.stderr
