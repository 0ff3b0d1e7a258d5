"""Every runner's periodic sweep also expires upload sessions left open and removes old objects no record
references (``fma_django.housekeeping``)."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from aggregator_support import wait_for
from django.core.cache import cache
from django.utils import timezone

from fma_aggregator import runners, tasks
from fma_aggregator.cli import main
from fma_aggregator.lambda_handler import handler
from fma_core.connectors.weight_store import StoredObject
from fma_core.errors import ObjectNotFound
from fma_django import ingestion, services
from fma_django.housekeeping import weights_remove_unreferenced
from fma_django.models import ModelAggregate, UploadSession, UploadState
from fma_django.storage import weight_store

from .test_lambda import SCHEDULED_EVENT, LambdaContext


def stale_and_fresh_sessions(experiment) -> tuple[UploadSession, UploadSession]:
    client, _ = services.client_register(experiment=experiment)
    stale, _ = ingestion.upload_start(experiment=experiment, client=client, size=100, sha256="a" * 64)
    fresh, _ = ingestion.upload_start(experiment=experiment, client=client, size=100, sha256="b" * 64)
    UploadSession.objects.filter(pk=stale.pk).update(created_on=timezone.now() - timedelta(days=2))
    return stale, fresh


def state(session: UploadSession) -> str:
    return UploadSession.objects.get(pk=session.pk).state


@pytest.mark.parametrize("runner", ["lambda", "celery", "inprocess"])
def test_each_runners_sweep_expires_stale_upload_sessions(runner, settings, make_experiment):
    stale, fresh = stale_and_fresh_sessions(make_experiment())
    if runner == "lambda":
        assert handler(SCHEDULED_EVENT, LambdaContext())["uploads_expired"] == 1
    elif runner == "celery":
        assert tasks.sweep() == []  # the beat's task, run here: no round is due
    else:
        settings.FMA_AGGREGATOR_RUNNER = "inprocess"
        runners.inprocess_runner().start()  # the runner sweeps as soon as it starts
        try:
            wait_for(lambda: state(stale) == UploadState.EXPIRED, what="the sweep")
        finally:
            runners._inprocess.stop(timeout=120)
            runners._inprocess = None
    assert (state(stale), state(fresh)) == (UploadState.EXPIRED, UploadState.OPEN)
    with pytest.raises(ObjectNotFound):  # the store's upload is aborted too
        weight_store().uploaded_parts(stale.weights_key, stale.store_upload_id)
    assert weight_store().uploaded_parts(fresh.weights_key, fresh.store_upload_id) == []


@pytest.mark.parametrize("runner", ["lambda", "celery", "inprocess", "run-once"])
def test_each_runners_sweep_removes_old_objects_no_record_references(runner, settings, make_experiment):
    """With the default settings the grace period is a day (the upload sessions' lifetime): an
    unreferenced object written a month ago goes, one written now stays, and recorded ones stay."""
    settings.FMA_ORPHAN_SWEEP_SECONDS = 0
    experiment = make_experiment()
    store = weight_store()
    old = store.put(f"updates/{experiment.pk}/old.safetensors", io.BytesIO(b"left by a crash"))
    month_ago = time.time() - 30 * 86400
    os.utime(Path(settings.FMA_WEIGHTS_DIR, old.key), (month_ago, month_ago))
    young = store.put(f"updates/{experiment.pk}/young.safetensors", io.BytesIO(b"its record is coming"))
    artifact_key = experiment.current_artifact.weights_key
    os.utime(Path(settings.FMA_WEIGHTS_DIR, artifact_key), (month_ago, month_ago))
    if runner == "lambda":
        assert handler(SCHEDULED_EVENT, LambdaContext())["orphans_removed"] == 1
    elif runner == "celery":
        tasks.sweep()
    elif runner == "run-once":
        assert main(["run-once"]) == 0
    else:
        settings.FMA_AGGREGATOR_RUNNER = "inprocess"
        runners.inprocess_runner().start()
        try:
            wait_for(lambda: not store.exists(old.key), what="the sweep")
        finally:
            runners._inprocess.stop(timeout=120)
            runners._inprocess = None
    assert not store.exists(old.key)
    assert store.exists(young.key)
    assert store.exists(artifact_key)


def test_a_process_lists_the_store_for_orphans_at_most_once_per_interval(settings, make_experiment):
    settings.FMA_ORPHAN_SWEEP_SECONDS = 3600
    cache.clear()
    experiment = make_experiment()
    store = weight_store()
    month_ago = time.time() - 30 * 86400

    def orphan(name: str) -> str:
        stored = store.put(f"updates/{experiment.pk}/{name}.safetensors", io.BytesIO(b"left by a crash"))
        os.utime(Path(settings.FMA_WEIGHTS_DIR, stored.key), (month_ago, month_ago))
        return stored.key

    first = orphan("first")
    assert weights_remove_unreferenced(lease_seconds=900) == 1
    second = orphan("second")
    assert weights_remove_unreferenced(lease_seconds=900) == 0  # within the hour: not listed again
    assert not store.exists(first)
    assert store.exists(second)


def test_the_sweep_keeps_the_server_state_an_aggregate_records_and_removes_one_no_record_names(
    settings, make_experiment
):
    """A stateful round writes its server state under ``aggregates/`` before the commit records it, so
    a round that died in between leaves a state file nothing names."""
    settings.FMA_ORPHAN_SWEEP_SECONDS = 0
    experiment = make_experiment()
    store = weight_store()
    month_ago = time.time() - 30 * 86400

    def old(key: str) -> StoredObject:
        stored = store.put(key, io.BytesIO(f"{key} was written a month ago".encode()))
        os.utime(Path(settings.FMA_WEIGHTS_DIR, key), (month_ago, month_ago))
        return stored

    weights = old(f"aggregates/{experiment.pk}/r1.safetensors")
    state = old(f"aggregates/{experiment.pk}/r1-state.safetensors")
    dead_rounds_state = old(f"aggregates/{experiment.pk}/r2-state.safetensors")
    ModelAggregate.objects.create(
        experiment=experiment,
        round_number=1,
        weights_key=weights.key,
        content_id=weights.sha256,
        size_bytes=weights.size,
        aggregator="fedadam",
        duration_seconds=0.0,
        state_key=state.key,
        state_content_id=state.sha256,
    )

    assert weights_remove_unreferenced(lease_seconds=900) == 1
    assert not store.exists(dead_rounds_state.key)
    assert store.exists(state.key)
    assert store.exists(weights.key)
