"""Helpers of the aggregator tests (importable by the tests and by worker processes: see conftest.py)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fma_aggregator import lambda_invoke
from fma_core.connectors import LocalDirectoryWeightStore
from fma_core.weights import WeightsReader, to_bytes
from fma_django import ingestion, services
from fma_django.models import Experiment, ModelUpdate

HERE = Path(__file__).parent
SHAPES = {"dense": (4, 3), "bias": (3,)}


def weights(value: float, shapes: dict = SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(value * 1000))
    return {name: (rng.standard_normal(shape) + value).astype(np.float32) for name, shape in shapes.items()}


def wait_for(condition: Callable[[], object], *, timeout: float = 120, what: str = "the condition") -> object:
    """Poll until ``condition()`` is truthy; generous timeouts, since the machine is shared."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def service_available(host: str, port: int, name: str) -> None:
    """Skip without the service on a developer's machine; fail under CI, where it must be there."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not reachable on {host}:{port}, and CI needs it")
        pytest.skip(f"needs {name} on {host}:{port}")


def submit(
    experiment: Experiment, value: float, *, num_examples: int = 1, shapes: dict = SHAPES
) -> ModelUpdate:
    """A new client enrolls and submits one update, as the API would."""
    client, _ = services.client_register(experiment=experiment)
    update, created = ingestion.update_submit(
        experiment=experiment,
        client=client,
        stream=io.BytesIO(to_bytes(weights(value, shapes))),
        num_examples=num_examples,
    )
    assert created
    return update


class Process:
    """A worker in its own process group, so a SIGKILL takes down all its processes at once."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            args, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._terminated = False

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._out.close()

    def terminate(self) -> None:
        """Ask for a graceful stop (SIGTERM, once) without waiting for it: ``stop`` waits."""
        if self.proc.poll() is None and not self._terminated:
            self._signal(signal.SIGTERM)
            self._terminated = True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)


def celery_worker_args(name: str, *, beat: bool, tmp_path: Path) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "fma_aggregator",
        "worker",
        "-P",
        "solo",
        "-n",
        f"{name}@%h",
    ]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"]
    if beat:
        args += ["-B", "-s", str(tmp_path / f"beat-{name}")]
    return args


def free_port() -> int:
    """A loopback port nothing listens on (the OS just handed it out and it was closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SilentBroker:
    """A broker that hangs: it accepts TCP connections on loopback and never answers a byte."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, name="silent-broker", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:  # closed
                return
            connection.setblocking(False)
            self.connections.append(connection)

    def still_open(self) -> int:
        """How many of the accepted connections their client has not closed (it still waits for an answer)."""
        waiting = 0
        for connection in list(self.connections):
            try:
                while connection.recv(65536):  # what the client sent (its handshake) until nothing is left
                    pass
            except BlockingIOError:
                waiting += 1  # nothing more to read, and not closed
            except OSError:
                pass  # reset: closed
        return waiting

    def close(self) -> None:
        self._server.close()
        for connection in self.connections:
            connection.close()


class HangingUp:
    """An endpoint that accepts each TCP connection and closes it at once; counts them (one per attempt)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.attempts = 0
        threading.Thread(target=self._accept, name="hanging-up", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:  # closed
                return
            self.attempts += 1
            connection.close()

    def close(self) -> None:
        self._server.close()


def use_lambda_api(monkeypatch: pytest.MonkeyPatch, settings: Any, url: str, function: str) -> None:
    """Run the service with the lambda runner, its invocations of ``function`` going to the Lambda API
    at ``url`` (with fake credentials); the process's cached Lambda clients are dropped, so the next one
    made sees them (drop them again when the test ends)."""
    for name, value in {
        "AWS_ENDPOINT_URL_LAMBDA": url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "FMA_AGGREGATOR_FUNCTION": function,
    }.items():
        monkeypatch.setenv(name, value)
    lambda_invoke.lambda_client.cache_clear()
    settings.FMA_AGGREGATOR_RUNNER = "lambda"


class FlakyStore(LocalDirectoryWeightStore):
    """A local store whose first ``failures`` block reads of weights opened by the in-process runner's
    thread (its rounds) fail with EIO: a disk or a network share failing for a moment. The service's own
    reads (the checks of pushed updates) are left alone. ``FMA_WEIGHT_STORE = "aggregator_support.FlakyStore"``."""

    def __init__(self, root: Path, failures: int = 1, thread: str = "fma-inprocess-runner") -> None:
        super().__init__(root)
        self.failures, self.thread = failures, thread
        self._lock = threading.Lock()

    def open_weights(self, key: str, *, max_bytes: int | None = None) -> WeightsReader:
        reader = super().open_weights(key, max_bytes=max_bytes)
        if threading.current_thread().name != self.thread:
            return reader
        read_block = reader.read_block

        def flaky(*args: Any, **kwargs: Any) -> np.ndarray:
            with self._lock:
                failing, self.failures = self.failures > 0, self.failures - 1
            if failing:
                raise OSError(errno.EIO, "Input/output error")
            return read_block(*args, **kwargs)

        reader.read_block = flaky  # type: ignore[method-assign]
        return reader
