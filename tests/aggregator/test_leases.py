"""Lease renewal on PostgreSQL: a worker slower than its lease keeps the round while a rival keeps trying."""

from __future__ import annotations

import threading
import time

import pytest
from aggregator_support import submit, wait_for

from fma_aggregator.engine import fresh_connection
from fma_core.connectors import LocalDirectoryWeightStore
from fma_core.rounds import RoundEngine, RoundOutcome
from fma_django.models import Event, EventKind, ModelAggregate, ModelUpdate, RoundLease, UpdateStatus
from fma_django.store import DjangoMetadataStore

pytestmark = pytest.mark.usefixtures("require_postgresql")

LEASE = 0.6  # seconds; the heartbeat renews every 0.2 s


class SlowStore(LocalDirectoryWeightStore):
    def open_weights(self, key: str, *, max_bytes: int | None = None):
        if key.startswith("updates/"):
            time.sleep(0.2)
        return super().open_weights(key, max_bytes=max_bytes)


def test_a_round_slower_than_its_lease_keeps_it_and_commits_once(make_experiment, weights_dir):
    experiment = make_experiment(round_policy={"policy": "require_x_updates", "x": 3})
    for value in (1.0, 2.0, 3.0):
        submit(experiment, value)
    slow = RoundEngine(DjangoMetadataStore(), SlowStore(weights_dir), worker_id="slow", lease_seconds=LEASE)
    outcomes: list[RoundOutcome] = []

    def run() -> None:
        with fresh_connection():
            outcomes.append(slow.run_round(str(experiment.pk)))

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(RoundLease.objects.filter(experiment=experiment, worker="slow").exists, what="the slow claim")
    rivals = []
    while worker.is_alive():  # 3 updates opened twice: ≥ 1.2 s, two leases
        rivals.append(DjangoMetadataStore().claim_round(str(experiment.pk), worker="rival", lease_seconds=60))
        time.sleep(0.05)
    worker.join()
    assert [o.status for o in outcomes] == ["committed"]
    assert len(rivals) > 5
    assert set(rivals) == {None}
    aggregate = ModelAggregate.objects.get(experiment=experiment)
    assert set(ModelUpdate.objects.filter(experiment=experiment).values_list("status", flat=True)) == {
        UpdateStatus.CONSUMED
    }
    starts = Event.objects.filter(experiment=experiment, kind=EventKind.ROUND_STARTED)
    assert [e.detail["worker"] for e in starts] == ["slow"]
    assert aggregate.round_number == 1
