"""Submitting updates: binary and v1 JSON bodies, every refusal a clear 4xx leaving nothing behind, retries idempotent."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fma_core.connectors.local import LocalDirectoryWeightStore
from fma_core.rounds import RoundEngine
from fma_core.weights import load, to_bytes
from fma_django import ingestion, lifecycle, services
from fma_django.models import Client, Event, EventKind, Experiment, ExperimentState, ModelUpdate, UpdateStatus
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore


@pytest.fixture
def before(stored_files, experiment):
    """The files present once the experiment (and its initial model) exist."""
    return stored_files()


@pytest.fixture(params=["in-memory", "streamed"])
def body_path(request, monkeypatch) -> str:
    """A small body is checked in memory before it is stored; a larger one is streamed to the
    store and checked there: the same refusals either way (``streamed`` lowers the bound)."""
    if request.param == "streamed":
        monkeypatch.setattr(ingestion, "IN_MEMORY_BYTES", 0)
    return request.param


@pytest.fixture
def puts(monkeypatch) -> list[str]:
    """The keys written to the local weight store from here on."""
    written: list[str] = []
    put = LocalDirectoryWeightStore.put

    def recording(self, key, stream, **kwargs):
        written.append(key)
        return put(self, key, stream, **kwargs)

    monkeypatch.setattr(LocalDirectoryWeightStore, "put", recording)
    return written


def test_binary_upload_is_stored_and_downloadable(
    experiment, client_api, uploader, safetensors, before, stored_files
):
    body = safetensors(0.25)
    response = uploader(
        client_api,
        experiment.pk,
        body,
        X_FMA_NUM_EXAMPLES="7",
        X_FMA_METRICS='{"loss": 0.5}',
        IDEMPOTENCY_KEY="k1",
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert (data["status"], data["num_examples"], data["metrics"], data["client"]) == (
        "pending",
        7,
        {"loss": 0.5},
        client_api.uuid,
    )
    assert len(stored_files()) == len(before) + 1

    download = client_api.get(data["data"])
    assert download.status_code == 200
    assert download["ETag"] == f'"{data["content_id"]}"'
    assert b"".join(download.streaming_content) == body
    assert Event.objects.filter(kind=EventKind.UPDATE_ACCEPTED).count() == 1


def test_a_push_in_one_request_takes_nine_statements(experiment, client_api, uploader, safetensors):
    """What a push reads and writes, pinned so that no statement creeps back in: the client
    (authentication) and its last_seen, never written before; the experiment through the client's
    live enrollment (the enrollment and the early state check use that row); the idempotency key;
    the twin and the experiment's state, read again, in one statement; the update and its event
    in one transaction (SAVEPOINT and RELEASE inside the test's own transaction)."""
    with CaptureQueriesContext(connection) as queries:
        response = uploader(client_api, experiment.pk, safetensors(0.25), IDEMPOTENCY_KEY="k1")
    assert response.status_code == 201, response.content
    assert len(queries.captured_queries) == 9, "\n".join(q["sql"][:120] for q in queries.captured_queries)


def test_an_experiment_stopped_while_the_bytes_are_stored_refuses_the_push(
    experiment, developer, client_api, uploader, safetensors, before, stored_files, monkeypatch
):
    """The early check reads the state the request began with; the state is read again before the
    insert, so a stop that commits in between refuses the update and leaves no bytes behind."""
    put = LocalDirectoryWeightStore.put

    def stopped_meanwhile(self, key, stream, **kwargs):
        lifecycle.experiment_set_state(
            experiment=Experiment.objects.get(pk=experiment.pk), state=ExperimentState.STOPPED, user=developer
        )
        return put(self, key, stream, **kwargs)

    monkeypatch.setattr(LocalDirectoryWeightStore, "put", stopped_meanwhile)
    response = uploader(client_api, experiment.pk, safetensors(0.25))
    assert (response.status_code, response.json()["code"]) == (409, "experiment_ended")
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)
    assert Event.objects.filter(kind=EventKind.UPDATE_REJECTED).count() == 1


def test_a_push_after_the_enrollment_or_the_client_is_revoked_is_refused_and_stores_nothing(
    experiment, client_api, uploader, safetensors, before, stored_files
):
    """The experiment's lookup through the client's live enrollment is the push's enrollment check."""
    client = Client.objects.get(uuid=client_api.uuid)
    services.enrollment_revoke(experiment=experiment, client=client, user=experiment.developer)
    assert uploader(client_api, experiment.pk, safetensors(0.25)).status_code == 404
    services.client_revoke(client=client)
    assert uploader(client_api, experiment.pk, safetensors(0.25)).status_code == 401
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)


def test_v1_json_update_is_converted_to_the_experiments_tensors(experiment, client_api):
    data = [np.full((4, 3), 2.0).tolist(), [1.0, 2.0, 3.0]]
    response = client_api.post(
        "/api/v1/model_updates/",
        {"federated_model": experiment.pk, "data": data, "base_aggregate": None},
        format="json",
    )
    assert response.status_code == 201, response.content
    update = ModelUpdate.objects.get()
    weights = load(client_api.get(response.json()["data"]).getvalue())
    assert list(weights) == ["dense", "bias"]
    assert weights["bias"].tolist() == [1.0, 2.0, 3.0]
    assert weights["dense"].dtype == np.float32
    assert update.num_examples == 1


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        (b"not a safetensors file at all", "invalid_weights", ""),
        (
            to_bytes({"dense": np.zeros((3, 4), np.float32), "bias": np.zeros(3, np.float32)}),
            "invalid_weights",
            "shape",
        ),
        (
            to_bytes({"dense": np.zeros((4, 3), np.float64), "bias": np.zeros(3, np.float64)}),
            "invalid_weights",
            "dtype",
        ),
        (to_bytes({"dense": np.zeros((4, 3), np.float32)}), "invalid_weights", "missing"),
        (
            to_bytes({"dense": np.full((4, 3), np.nan, np.float32), "bias": np.zeros(3, np.float32)}),
            "invalid_weights",
            "NaN",
        ),
    ],
    ids=["malformed", "wrong-shape", "wrong-dtype", "missing-tensor", "nan"],
)
def test_bad_weights_are_refused_and_nothing_is_stored(
    experiment, client_api, uploader, body, code, says, before, stored_files, body_path, puts
):
    response = uploader(client_api, experiment.pk, body)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == code
    assert says in response.json()["detail"]
    assert ModelUpdate.objects.count() == 0
    assert stored_files() == before
    assert Event.objects.filter(kind=EventKind.UPDATE_REJECTED).count() == 1
    assert len(puts) == (0 if body_path == "in-memory" else 1)  # in memory: refused before a write


@pytest.mark.parametrize("corruption", ["flipped-byte", "cut-short"])
def test_bytes_changed_on_the_way_are_a_hash_mismatch_even_when_they_no_longer_parse(
    experiment, client_api, uploader, safetensors, corruption, before, stored_files, body_path
):
    """The declared hash is checked before the tensors: corrupted bytes are a transfer problem,
    not the client's weights, whichever is found first."""
    sent = safetensors(1.0)
    received = sent[:-8] if corruption == "cut-short" else b"\xff" + sent[1:]
    response = uploader(client_api, experiment.pk, received, X_FMA_SHA256=hashlib.sha256(sent).hexdigest())
    assert (response.status_code, response.json()["code"]) == (400, "hash_mismatch")
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"X_FMA_NUM_EXAMPLES": "0"}, "num_examples"),
        ({"X_FMA_NUM_EXAMPLES": "many"}, "num_examples"),
        ({"X_FMA_METRICS": "{not json"}, "metrics"),
        ({"X_FMA_BASE_AGGREGATE": "424242"}, "base_aggregate"),
    ],
)
def test_bad_metadata_is_refused(
    experiment, client_api, uploader, safetensors, headers, says, before, stored_files
):
    response = uploader(client_api, experiment.pk, safetensors(1.0), **headers)
    assert response.status_code == 400
    assert says in response.json()["detail"]
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)


def test_malformed_json_body_is_refused(experiment, client_api):
    response = client_api.generic(
        "POST", "/api/v1/model_updates/", b'{"federated_model": 1, "data": [', content_type="application/json"
    )
    assert response.status_code == 400
    ragged = client_api.post(
        "/api/v1/model_updates/",
        {"federated_model": experiment.pk, "data": [[1.0, 2.0], [1.0]]},
        format="json",
    )
    assert ragged.status_code == 400
    assert ModelUpdate.objects.count() == 0


def test_a_base_aggregate_of_another_experiment_is_refused(
    make_experiment, experiment, client_api, enroll, uploader, safetensors
):
    other = make_experiment(name="other")
    assert uploader(enroll(other), other.pk, safetensors(1.0)).status_code == 201
    RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(other.pk))
    foreign = other.aggregates.get()

    response = uploader(client_api, experiment.pk, safetensors(1.0), X_FMA_BASE_AGGREGATE=str(foreign.pk))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_base"
    assert not ModelUpdate.objects.filter(experiment=experiment).exists()


def test_retries_return_the_first_update(
    experiment, client_api, uploader, safetensors, stored_files, body_path
):
    first = uploader(client_api, experiment.pk, safetensors(1.0), IDEMPOTENCY_KEY="once")
    files = stored_files()
    again = uploader(client_api, experiment.pk, safetensors(1.0), IDEMPOTENCY_KEY="once")
    same_key_other_body = uploader(client_api, experiment.pk, safetensors(2.0), IDEMPOTENCY_KEY="once")
    same_content_no_key = uploader(client_api, experiment.pk, safetensors(1.0))
    assert first.status_code == 201
    assert [r.status_code for r in (again, same_key_other_body, same_content_no_key)] == [200, 200, 200]
    assert {r.json()["id"] for r in (first, again, same_key_other_body, same_content_no_key)} == {
        first.json()["id"]
    }
    assert ModelUpdate.objects.count() == 1
    assert stored_files() == files

    json_body = {"federated_model": experiment.pk, "data": [np.full((4, 3), 3.0).tolist(), [0.0] * 3]}
    json_first = client_api.post("/api/v1/model_updates/", json_body, format="json")
    json_again = client_api.post("/api/v1/model_updates/", json_body, format="json")
    assert (json_first.status_code, json_again.status_code) == (201, 201)
    assert json_first.json()["id"] == json_again.json()["id"]
    assert ModelUpdate.objects.filter(status=UpdateStatus.PENDING).count() == 2


def test_upload_needs_a_content_length(experiment, client_api):
    response = client_api.generic(
        "POST", f"/api/v1/models/{experiment.pk}/upload_update/", b"", content_type="application/octet-stream"
    )
    assert response.status_code == 411
