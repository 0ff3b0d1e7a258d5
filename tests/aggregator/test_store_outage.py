"""A weight store failing for a moment while a runner reads a round's updates: the round is given back, no
update is quarantined, and the sweep's next run commits every update, once."""

from __future__ import annotations

import pytest
from aggregator_support import submit, wait_for

from fma_aggregator import runners
from fma_django.models import Event, EventKind, ModelAggregate, ModelUpdate, UpdateStatus


@pytest.fixture
def flaky_store(settings, weights_dir, monkeypatch):
    settings.FMA_WEIGHT_STORE = "aggregator_support.FlakyStore"
    settings.FMA_WEIGHT_STORE_OPTIONS = {"root": weights_dir, "failures": 1}
    monkeypatch.setenv("FMA_SWEEP_SECONDS", "1")  # the sweep gives the failed round its next run


def test_the_in_process_runner_gives_a_round_back_through_an_outage_and_commits_every_update_once(
    inprocess, flaky_store, make_experiment
):
    experiment = make_experiment(round_policy={"policy": "require_x_updates", "x": 3})
    updates = {submit(experiment, value).pk for value in (1.0, 2.0, 3.0)}
    aggregate = wait_for(
        lambda: ModelAggregate.objects.filter(experiment=experiment).first(),
        what="the round after the outage",
    )
    assert set(aggregate.updates.values_list("pk", flat=True)) == updates
    assert set(ModelUpdate.objects.filter(experiment=experiment).values_list("status", flat=True)) == {
        UpdateStatus.CONSUMED
    }
    assert ModelAggregate.objects.filter(experiment=experiment).count() == 1
    events = list(Event.objects.filter(experiment=experiment).order_by("pk"))
    kinds = [e.kind for e in events]
    assert EventKind.UPDATE_QUARANTINED not in kinds
    (failed,) = [e for e in events if e.kind == EventKind.ROUND_FAILED]
    assert "StoreUnavailable" in failed.detail["reason"]
    assert "Input/output error" in failed.detail["reason"]
    assert kinds.index(EventKind.ROUND_FAILED) < kinds.index(EventKind.ROUND_COMPLETED)
    statuses = [o.status for o in runners._inprocess.outcomes]
    assert statuses.count("failed") == 1
    assert statuses.index("failed") < statuses.index("committed")
