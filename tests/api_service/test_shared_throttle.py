"""Throttles count in the cache every API process shares: two `fma-server` processes on one data dir
(so one SQLite database and its database cache) refuse the request that goes over the rate, whichever
process it reaches. Per-process counting (Django's default local-memory cache) would let each
process answer its own quota."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMA_", "DJANGO_"))}
    return {
        **env,
        "FMA_DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "fma_service.settings",
        "FMA_SECRET_KEY": "test-key",
        "FMA_BIND": f"127.0.0.1:{port}",
        "FMA_WORKERS": "1",
        "FMA_THROTTLE_LOGIN": "4/hour",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _server(data_dir: Path, log: Path) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fma_service"], env=_env(data_dir, port), stdout=output, stderr=output
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fma-server did not come up: {log.read_text()}")
            try:
                requests.get(url + "/api/v1/", timeout=10)
                break
            except requests.RequestException:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def _login(url: str, number: int) -> int:
    body = {"username": f"nobody{number}", "password": "not the password"}
    return requests.post(url + "/api-token-auth/", json=body, timeout=60).status_code


def test_the_login_throttle_is_shared_by_two_server_processes(tmp_path):
    with (
        _server(tmp_path, tmp_path / "first.log") as first,
        _server(tmp_path, tmp_path / "second.log") as second,
    ):
        answers = [_login(url, number) for number, url in enumerate([first, second, first, second])]
        assert answers == [400, 400, 400, 400]
        assert _login(first, 4) == 429
        assert _login(second, 5) == 429
