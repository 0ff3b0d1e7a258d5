"""On PostgreSQL, 50 clients submitting at once through a live server while three workers run rounds
concurrently: exactly 50 updates, each consumed by exactly one aggregate, rounds numbered without gaps."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from django.db import connections
from django.db.models import Count

from fma_core.rounds import RoundEngine
from fma_core.weights import to_bytes
from fma_django import services
from fma_django.models import Event, EventKind, ModelAggregate, ModelUpdate, UpdateStatus
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

CLIENTS = 50
WORKERS = 3


def submit(base_url: str, experiment_id: int, value: float) -> int:
    with requests.Session() as http:
        registered = http.post(f"{base_url}/api/v1/models/{experiment_id}/register_client/", timeout=60)
        registered.raise_for_status()
        http.headers["Authorization"] = f"Client {registered.json()['credential']}"
        body = to_bytes({"w": np.full((16,), value, np.float32)})
        response = http.post(
            f"{base_url}/api/v1/models/{experiment_id}/upload_update/",
            data=body,
            headers={"Content-Type": "application/octet-stream", "X-FMA-Num-Examples": "1"},
            timeout=60,
        )
        assert response.status_code == 201, response.text
        return response.json()["id"]


def run_rounds(experiment_id: int, uploads_done: threading.Event, worker: str) -> list[str]:
    engine = RoundEngine(DjangoMetadataStore(), weight_store(), worker_id=worker, lease_seconds=60, threads=1)
    outcomes = []
    try:
        while True:
            finished = uploads_done.is_set()  # read before the round: nothing arrives after it is set
            outcomes.append(engine.run_round(str(experiment_id)).status)
            if (
                finished
                and not ModelUpdate.objects.filter(
                    experiment_id=experiment_id, status=UpdateStatus.PENDING
                ).exists()
            ):
                return outcomes
    finally:
        connections.close_all()


def test_fifty_concurrent_clients_one_aggregate_each(
    require_postgresql, transactional_db, live_server, weights_dir, developer
):
    experiment = services.experiment_create(
        developer=developer,
        name="crowd",
        open_enrollment=True,
        tensor_spec=[{"name": "w", "dtype": "F32", "shape": [16]}],
    )
    uploads_done = threading.Event()
    with ThreadPoolExecutor(CLIENTS + WORKERS) as pool:
        workers = [
            pool.submit(run_rounds, experiment.pk, uploads_done, f"worker-{n}") for n in range(WORKERS)
        ]
        uploads = [pool.submit(submit, live_server.url, experiment.pk, float(n)) for n in range(CLIENTS)]
        update_ids = [u.result() for u in uploads]
        uploads_done.set()
        outcomes = [status for w in workers for status in w.result()]

    assert len(set(update_ids)) == CLIENTS
    updates = ModelUpdate.objects.filter(experiment=experiment)
    assert updates.count() == CLIENTS
    assert set(updates.values_list("status", flat=True)) == {UpdateStatus.CONSUMED}
    assert not updates.filter(aggregate__isnull=True).exists()
    aggregates = ModelAggregate.objects.filter(experiment=experiment).annotate(n=Count("updates"))
    assert sum(a.n for a in aggregates) == CLIENTS
    assert all(a.n >= 1 for a in aggregates)
    rounds = sorted(a.round_number for a in aggregates)
    assert rounds == list(range(1, len(rounds) + 1))
    assert outcomes.count("committed") == len(rounds)
    assert Event.objects.filter(experiment=experiment, kind=EventKind.ROUND_COMPLETED).count() == len(rounds)
    parents = {a.round_number: a.parent.round_number if a.parent else None for a in aggregates}
    assert parents == {n: (n - 1 if n > 1 else None) for n in rounds}  # one chain, never a fork
