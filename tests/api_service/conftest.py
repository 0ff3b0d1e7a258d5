"""The real ``fma-server`` (``python -m fma_service``) in a subprocess, on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests


def clean_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any FMA_ or DJANGO_ variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMA_", "DJANGO_"))}
    return {**env, "FMA_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "fma_service.settings", **extra}


@pytest.fixture
def clean_env() -> Callable[..., dict[str, str]]:
    return clean_environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Served:
    url: str
    env: dict[str, str]  # the server's environment, for manage.py commands on its database

    def create_superuser(self, username: str, password: str) -> None:
        """An account on the server's database, as an operator makes one (``createsuperuser``)."""
        command = [
            "createsuperuser",
            "--noinput",
            "--username",
            username,
            "--email",
            f"{username}@example.com",
        ]
        done = subprocess.run(
            [sys.executable, "-m", "django", *command],
            env={**self.env, "DJANGO_SUPERUSER_PASSWORD": password},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr


class Servers:
    """fma-server processes started on free ports, each with a data directory under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen] = []

    def start(self, headers: dict[str, str] | None = None, **extra: str) -> Served:
        """Start fma-server with ``extra`` in its environment; returns once it answers.
        ``headers`` are sent with the readiness probe (a proxy's ``X-Forwarded-Proto``)."""
        port = free_port()
        data_dir = self.directory / f"server-{port}"
        data_dir.mkdir()
        env = clean_environment(data_dir, FMA_BIND=f"127.0.0.1:{port}", **extra)
        log = data_dir / "server.log"
        with open(log, "w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "fma_service"], env=env, stdout=output, stderr=output
            )
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fma-server did not come up: {log.read_text()}")
            try:
                requests.get(url + "/api/v1/", headers=headers, timeout=10, allow_redirects=False)
                return Served(url, env)
            except requests.RequestException:
                time.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def serve(tmp_path) -> Iterator[Callable[..., Served]]:
    """``serve(headers=None, **env)`` starts fma-server (``Servers.start``); stopped after the test."""
    servers = Servers(tmp_path)
    yield servers.start
    servers.stop()


@pytest.fixture(scope="module")
def serve_for_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Served]]:
    """``serve`` for a module's tests that only send requests the server keeps nothing of: one
    server for all of them (each start costs seconds), stopped after the module."""
    servers = Servers(tmp_path_factory.mktemp("servers"))
    yield servers.start
    servers.stop()
