"""Exactly once in asynchronous mode, with live workers on PostgreSQL: 200 updates pushed concurrently
into an experiment that closes a round every K, while the worker holding the first round is SIGKILLed
mid-round; every accepted update lands in exactly one aggregate, each round takes K, and each
aggregate's staleness section names exactly its updates."""

from __future__ import annotations

import io
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from aggregator_support import wait_for, weights
from django.db import connection

from fma_core.weights import to_bytes
from fma_django import ingestion, services
from fma_django.models import Event, EventKind, ModelAggregate, ModelUpdate, RoundLease, UpdateStatus

pytestmark = pytest.mark.usefixtures("require_postgresql")

PUSHES = 200
BUFFER = 10
SLOW = {
    "FMA_WEIGHT_STORE": "slow_store.SlowWeightStore",
    "FMA_TEST_SLOW_SECONDS": "60",
    "FMA_LEASE_SECONDS": "4",
}


def push(experiment, clients, number: int) -> int:
    """One client's push, as the API accepts it (each client pushes several times, from the initial model)."""
    try:
        update, created = ingestion.update_submit(
            experiment=experiment,
            client=clients[number % len(clients)],
            stream=io.BytesIO(to_bytes(weights(1.0 + number / 1000))),
            num_examples=1 + number % 7,
        )
        assert created
        return update.pk
    finally:
        connection.close()  # this thread's connection


def test_200_concurrent_pushes_with_a_worker_killed_mid_round_land_once_each(
    make_experiment, worker_env, processes, tmp_path
):
    marker = tmp_path / "round-started"
    experiment = make_experiment(asynchronous={"buffer": BUFFER, "staleness": {"function": "fedbuff"}})
    clients = [services.client_register(experiment=experiment)[0] for _ in range(20)]
    worker = [sys.executable, "-m", "fma_aggregator.cli", "worker", "--sweep-seconds", "1"]
    doomed = processes(worker, worker_env(FMA_TEST_MARKER=str(marker), **SLOW))

    with ThreadPoolExecutor(8) as pool:
        pushed = [pool.submit(push, experiment, clients, n) for n in range(PUSHES)]
        wait_for(marker.exists, what=f"the first worker to start a round; its log:\n{doomed.output()}")
        assert RoundLease.objects.get(experiment=experiment).token, "the doomed worker holds the round"
        doomed.kill()
        accepted = sorted(future.result() for future in pushed)
    assert len(set(accepted)) == PUSHES
    assert not ModelAggregate.objects.filter(experiment=experiment).exists()

    survivor = processes(worker, worker_env())
    wait_for(
        lambda: not ModelUpdate.objects.filter(experiment=experiment, status=UpdateStatus.PENDING).exists(),
        what=f"every update to be aggregated; the survivor's log:\n{survivor.output()}",
        timeout=300,
    )
    updates = ModelUpdate.objects.filter(experiment=experiment)
    assert sorted(updates.values_list("pk", flat=True)) == accepted
    assert {u.status for u in updates} == {UpdateStatus.CONSUMED}
    aggregates = list(ModelAggregate.objects.filter(experiment=experiment).order_by("round_number"))
    assert [a.round_number for a in aggregates] == list(range(1, PUSHES // BUFFER + 1))
    per_aggregate = Counter(updates.values_list("aggregate_id", flat=True))
    assert set(per_aggregate) == {a.pk for a in aggregates}
    assert set(per_aggregate.values()) == {BUFFER}  # each round took K, none more, none fewer
    for aggregate in aggregates:
        mine = {str(pk) for pk in aggregate.updates.values_list("pk", flat=True)}
        staleness = aggregate.report["staleness"]
        assert set(staleness["updates"]) == mine
        # every update was trained from the initial model: round r sees them r - 1 versions old
        assert staleness["mix"] == {str(aggregate.round_number - 1): BUFFER}
    starts = Event.objects.filter(experiment=experiment, kind=EventKind.ROUND_STARTED)
    # the dead worker's claim, then the survivor's rounds (a worker id is host:pid:engine)
    assert len({e.detail["worker"].rsplit(":", 1)[0] for e in starts}) == 2
