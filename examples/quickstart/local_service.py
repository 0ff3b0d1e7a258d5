"""The real FMA service on the embedded default, in a subprocess, for the examples and their tests.

``python -m fma_service`` (uvicorn; migrations run at start) with SQLite and the weight directory
in a data directory of its own, the in-process aggregation runner, on a free loopback port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import requests

USERNAME = "quickstart"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """The real FMA service in a subprocess: ``python -m fma_service`` on the embedded default."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FMA_", "DJANGO_"))},
            "FMA_DATA_DIR": str(data_dir),
            "FMA_DEVELOPMENT": "1",  # a secret key generated and kept in the data dir
            "FMA_BIND": f"127.0.0.1:{self.port}",
            "FMA_AGGREGATOR_RUNNER": "inprocess",
            "FMA_WORKERS": "1",  # one process: its in-process runner sees every update
            "FMA_THREADS": "8",
            "FMA_LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "fma_service.settings",
        }
        self.log_path = data_dir / "server.log"
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the server process and return at once (it migrates, then serves)."""
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fma_service"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the API answers (any answer but a 5xx: the API root asks for credentials)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(self.url + "api/v1/", timeout=5).status_code < 500:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the service did not answer within {timeout} s:\n{self.log_tail()}")

    def has_page(self, path: str) -> bool:
        return requests.get(self.url + path, timeout=10, allow_redirects=False).status_code != 404

    def create_developer(self, password: str) -> None:
        """The developer account, as an operator makes one: ``createsuperuser`` (so the admin works too)."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "django",
                "createsuperuser",
                "--noinput",
                "--username",
                USERNAME,
                "--email",
                "quickstart@example.com",
            ],
            env={**self.env, "DJANGO_SUPERUSER_PASSWORD": password},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise RuntimeError(f"createsuperuser failed:\n{done.stderr}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # uvicorn's graceful stop
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
