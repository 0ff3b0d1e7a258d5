"""A weight store failing for a moment: a round reading its updates is given back, no update is quarantined,
and the sweep's next run commits every update, once; an upload being checked is not refused, and its
check runs again."""

from __future__ import annotations

import pytest
from aggregator_support import submit, wait_for

from fma_aggregator import runners
from fma_core.errors import StoreUnavailable
from fma_django import ingestion
from fma_django.models import Event, EventKind, ModelAggregate, ModelUpdate, UpdateStatus, UploadState
from fma_django.storage import weight_store

from .test_upload_checks import checking, state, uploaded


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


@pytest.fixture
def store_failing_once(weights_dir, monkeypatch):
    """The service's weight store, whose next ``open`` (an upload's check reads the object through it)
    fails as S3 does after botocore's retries."""
    store = weight_store()
    opened = store.open
    failures = [StoreUnavailable("the S3 store failed: SlowDown (HTTP 503) in GetObject")]

    def open_once_failing(key: str):
        if failures:
            raise failures.pop()
        return opened(key)

    monkeypatch.setattr(store, "open", open_once_failing)
    return store


def test_a_store_failing_while_a_runner_checks_an_upload_refuses_nothing(
    checked_later, make_experiment, store_failing_once
):
    session = checking(uploaded(make_experiment()))
    with pytest.raises(StoreUnavailable):  # the runner logs it; the sweep hands the check out again
        ingestion.upload_check(session.uuid)
    assert state(session) == UploadState.CHECKING
    assert store_failing_once.exists(session.weights_key)  # the joined bytes are kept
    assert not ModelUpdate.objects.exists()

    checked = ingestion.upload_check(session.uuid)
    assert checked.state == UploadState.COMPLETED
    assert checked.update.status == UpdateStatus.PENDING


def test_a_store_failing_while_a_complete_request_checks_an_upload_refuses_nothing(
    make_experiment, store_failing_once
):
    session = uploaded(make_experiment())
    with pytest.raises(StoreUnavailable):
        ingestion.upload_complete(session=session)
    assert state(session) == UploadState.OPEN  # completing again resumes
    assert not Event.objects.filter(kind=EventKind.UPDATE_REJECTED).exists()

    completion = ingestion.upload_complete(session=session)
    assert completion.session.state == UploadState.COMPLETED
    assert completion.update.status == UpdateStatus.PENDING
