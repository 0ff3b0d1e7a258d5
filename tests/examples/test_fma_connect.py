"""The migration story: the original client library, fma-connect 0.0.2, driving an unchanged script."""

from __future__ import annotations

import subprocess
import sys

from .support import EXAMPLES, script_env


def test_an_fma_connect_script_completes_a_round_against_the_service():
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "fma_connect" / "demo.py"), "--clients", "2", "--rounds", "1"],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "legacy-mode experiment" in done.stdout
    assert done.stdout.count("(exit 0)") == 2
    assert done.stdout.count("round 1: aggregate 1, accuracy") == 2  # both saw the round's aggregate
    assert "1 rounds aggregated by the service" in done.stdout


def test_the_script_uses_only_fma_connect_to_talk_to_the_service():
    source = (EXAMPLES / "fma_connect" / "client.py").read_text()
    assert "from fma_connect import WebClient" in source
    assert "fma_client" not in source
    assert "fma_core" not in source
