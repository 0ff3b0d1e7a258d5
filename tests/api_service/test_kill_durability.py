"""An accepted update survives a SIGKILL of the server and is aggregated exactly once.

The real ``fma-server`` (one process, the in-process runner, SQLite and the local weight
directory) takes concurrent small pushes (one request each, ``fma_client.single``); right after
the first answers arrive it is killed with SIGKILL, mid-way through the others. Restarted on the
same data directory, it holds every update it answered 201 for, with bytes whose SHA-256 is the
update's. Every client then pushes again with its own idempotency key: those accepted before the
kill get their first update back, the others are created, and the round that follows takes each
update exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

from fma_client import Client, FmaClientError, Retry

from .conftest import clean_environment, free_port

CLIENTS = 12
KILL_AFTER = 4  # answers received before the kill

SETUP = """
import json, django
django.setup()
from django.contrib.auth.models import User
from fma_django import services
developer = User.objects.create(username="dev")
experiment = services.experiment_create(
    developer=developer, name="kill", open_enrollment=True,
    tensor_spec=[{"name": "w", "dtype": "F32", "shape": [1000]}],
    round_policy={"policy": "require_x_updates", "x": CLIENTS},
)
print(json.dumps([experiment.pk, [services.client_register(experiment=experiment)[1] for _ in range(CLIENTS)]]))
""".replace("CLIENTS", str(CLIENTS))

STATE = """
import hashlib, json, django
django.setup()
from fma_django.models import ModelAggregate, ModelUpdate
from fma_django.storage import weight_store
updates = []
for u in ModelUpdate.objects.order_by("pk"):
    with weight_store().open(u.weights_key) as source:
        digest = hashlib.sha256(source.read()).hexdigest()
    updates.append({"id": u.pk, "key": u.idempotency_key, "status": u.status, "aggregate": u.aggregate_id,
                    "bytes_match": digest == u.content_id})
print(json.dumps({"updates": updates, "aggregates": list(ModelAggregate.objects.values_list("pk", flat=True))}))
"""


class Server:
    """fma-server on one data directory and port, started again after a kill."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = clean_environment(
            data_dir,
            FMA_BIND=f"127.0.0.1:{self.port}",
            FMA_DEVELOPMENT="1",
            FMA_SECRET_KEY="kill-test",
            FMA_WORKERS="1",  # uvicorn serves in this one process: the SIGKILL ends the server
            FMA_THREADS="8",
            FMA_AGGREGATOR_RUNNER="inprocess",
            FMA_LOG_LEVEL="WARNING",
        )
        self.log = data_dir / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fma_service"],
                env=self.env,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            try:
                requests.get(self.url + "api/v1/", timeout=5)
                return
            except requests.RequestException:
                time.sleep(0.2)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def django(self, code: str) -> dict | list:
        """Run ``code`` in a process on the server's settings and database; its printed JSON."""
        done = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])


def weights(n: int) -> dict[str, np.ndarray]:
    return {"w": np.full(1000, n, dtype=np.float32)}


def test_updates_answered_201_survive_a_sigkill_and_aggregate_exactly_once(tmp_path):
    server = Server(tmp_path)
    try:
        server.start()
        experiment, credentials = server.django(SETUP)
        answered: dict[int, int] = {}  # client number -> update id, for each 201 received
        lock = threading.Condition()

        def push(n: int) -> None:
            try:
                with Client(
                    server.url, experiment, token=credentials[n], quiet=True, retry=Retry(attempts=1)
                ) as c:
                    update = c.push(weights(n), num_examples=1, idempotency_key=f"kill-{n}")
            except FmaClientError:
                return  # the server was killed under this push: pushed again below
            with lock:
                answered[n] = update["id"]
                lock.notify_all()

        threads = [threading.Thread(target=push, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        with lock:
            assert lock.wait_for(lambda: len(answered) >= KILL_AFTER, timeout=120), "no answers to kill after"
            server.kill()  # right after the answers, with the other pushes in flight
            accepted = dict(answered)
        for thread in threads:
            thread.join(120)

        server.start()
        kept = {u["key"]: u for u in server.django(STATE)["updates"]}
        for n, update_id in accepted.items():
            assert kept[f"kill-{n}"]["id"] == update_id, f"update {update_id}, answered 201, was lost"
            assert kept[f"kill-{n}"]["bytes_match"], f"update {update_id}'s bytes were not kept whole"

        again = {}
        for n in range(CLIENTS):  # everyone pushes again with its key: each update counted once
            with Client(server.url, experiment, token=credentials[n], quiet=True) as client:
                again[n] = client.push(weights(n), num_examples=1, idempotency_key=f"kill-{n}")["id"]
        assert all(again[n] == update_id for n, update_id in accepted.items())

        deadline = time.monotonic() + 120
        while not (state := server.django(STATE))["aggregates"]:
            assert time.monotonic() < deadline, "no round after every client pushed"
        updates = state["updates"]
        assert sorted(u["id"] for u in updates) == sorted(again.values())
        assert len(state["aggregates"]) == 1
        assert all(u["status"] == "consumed" and u["aggregate"] == state["aggregates"][0] for u in updates)
        assert all(u["bytes_match"] for u in updates)
    finally:
        server.stop()
