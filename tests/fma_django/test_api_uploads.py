"""Upload sessions through the API with the local store: parts in any order, resume, every refusal a
clear 4xx leaving nothing behind, idempotent start and complete, expiry and retention by the sweep."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import requests
from django.db import connections
from django.utils import timezone

from fma_core.errors import StoreUnavailable
from fma_core.rounds import RoundEngine
from fma_core.weights import to_bytes
from fma_django import ingestion, services
from fma_django.housekeeping import housekeeping_sweep
from fma_django.models import Event, EventKind, ModelUpdate, UploadSession, UploadState
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

PART = 64


@pytest.fixture(autouse=True)
def small_parts(settings):
    """Parts of 64 bytes, so a small model arrives in several."""
    settings.FMA_UPLOAD_PART_BYTES = PART


@pytest.fixture
def before(stored_files, experiment):
    """The files present once the experiment (and its initial model) exist."""
    return stored_files()


def start(api, experiment_id, body, *, sha256=None, size=None, **fields):
    return api.post(
        f"/api/v1/models/{experiment_id}/uploads/",
        {
            "size": len(body) if size is None else size,
            "sha256": sha256 or hashlib.sha256(body).hexdigest(),
            **fields,
        },
        format="json",
    )


def put(api, target, data):
    return api.generic("PUT", target["url"], data, content_type="application/octet-stream")


def send(api, session, body, numbers=None):
    """PUT the parts ``numbers`` (default all, in order) of ``body`` to the session's targets."""
    targets = {t["number"]: t for t in session["targets"]}
    for number in numbers or sorted(targets):
        target = targets[number]
        response = put(api, target, body[target["offset"] : target["offset"] + target["size"]])
        assert response.status_code == 200, response.content


def start_late(api, experiment_id, body, **fields):
    """Start an upload without its SHA-256: the completion declares it."""
    return api.post(f"/api/v1/models/{experiment_id}/uploads/", {"size": len(body), **fields}, format="json")


def complete(api, session, sha256=None):
    return api.post(
        f"/api/v1/models/{session['federated_model']}/uploads/{session['id']}/complete/",
        {} if sha256 is None else {"sha256": sha256},
        format="json",
    )


def status(api, session):
    return api.get(f"/api/v1/models/{session['federated_model']}/uploads/{session['id']}/")


def test_parts_sent_out_of_order_become_one_update(experiment, client_api, safetensors, before, stored_files):
    body = safetensors(0.25)
    started = start(
        client_api, experiment.pk, body, num_examples=7, metrics={"loss": 0.5}, idempotency_key="k"
    )
    assert started.status_code == 201, started.content
    session = started.json()
    count = -(-len(body) // PART)
    assert (session["state"], session["part_size"], session["part_count"]) == ("open", PART, count)
    assert [t["number"] for t in session["targets"]] == list(range(1, count + 1))
    assert sum(t["size"] for t in session["targets"]) == len(body)
    assert all(
        t["method"] == "PUT" and "/parts/" in t["url"] and "expires_at" not in t for t in session["targets"]
    )

    send(client_api, session, body, numbers=list(range(count, 0, -1)))
    received = status(client_api, session).json()["parts"]
    assert [p["number"] for p in received] == list(range(1, count + 1))

    done = complete(client_api, session)
    assert done.status_code == 201, done.content
    update = done.json()
    assert (update["num_examples"], update["metrics"], update["idempotency_key"]) == (7, {"loss": 0.5}, "k")
    assert update["content_id"] == hashlib.sha256(body).hexdigest()
    assert b"".join(client_api.get(update["data"]).streaming_content) == body
    assert len(stored_files()) == len(before) + 1  # the update; no part is left
    assert Event.objects.filter(kind=EventKind.UPDATE_ACCEPTED).count() == 1

    again = complete(client_api, session)
    assert (again.status_code, again.json()["id"]) == (200, update["id"])
    shown = status(client_api, session).json()
    assert (shown["state"], shown["update"]["id"], shown["targets"], shown["parts"]) == (
        "completed",
        update["id"],
        [],
        [],
    )
    # The one-request form with the same idempotency key finds the same update.
    assert ModelUpdate.objects.count() == 1


def test_a_broken_upload_resumes_with_the_missing_parts_only(experiment, client_api, safetensors):
    body = safetensors(0.75)
    session = start(client_api, experiment.pk, body).json()
    count = session["part_count"]
    assert count >= 3
    send(client_api, session, body, numbers=[1, 3])

    early = complete(client_api, session)
    assert early.status_code == 400
    assert early.json()["code"] == "incomplete_upload"
    missing = [n for n in range(1, count + 1) if n not in (1, 3)]
    assert f"parts missing: {', '.join(map(str, missing))}" in early.json()["detail"]

    resumed = status(client_api, session).json()
    assert resumed["state"] == "open"
    assert [p["number"] for p in resumed["parts"]] == [1, 3]
    send(
        client_api, resumed, body, numbers=[t["number"] for t in resumed["targets"] if t["number"] in missing]
    )
    done = complete(client_api, session)
    assert done.status_code == 201, done.content
    assert done.json()["content_id"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("fault", ["corrupted-part", "wrong-declared-hash"])
def test_bytes_that_do_not_hash_to_the_declared_sha256_are_rejected_and_removed(
    experiment, client_api, safetensors, before, stored_files, fault
):
    body = safetensors(0.5)
    declared = hashlib.sha256(safetensors(0.6)).hexdigest() if fault == "wrong-declared-hash" else None
    session = start(client_api, experiment.pk, body, sha256=declared).json()
    sent = bytearray(body)
    if fault == "corrupted-part":
        sent[PART + 3] ^= 0xFF  # one bit flipped in part 2: same size, other bytes
    send(client_api, session, bytes(sent))

    refused = complete(client_api, session)
    assert refused.status_code == 400, refused.content
    assert refused.json()["code"] == "hash_mismatch"
    assert "SHA-256" in refused.json()["detail"]
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)
    assert UploadSession.objects.get().state == UploadState.REJECTED
    assert Event.objects.filter(kind=EventKind.UPDATE_REJECTED).count() == 1
    again = complete(client_api, session)
    assert (again.status_code, again.json()["code"]) == (409, "upload_rejected")


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda: to_bytes({"dense": np.zeros((3, 4), np.float32), "bias": np.zeros(3, np.float32)}), "shape"),
        (lambda: to_bytes({"dense": np.zeros((4, 3), np.float32), "bias": np.zeros(3, np.float32)})[:-4], ""),
        (
            lambda: to_bytes({"dense": np.full((4, 3), np.inf, np.float32), "bias": np.zeros(3, np.float32)}),
            "infinite",
        ),
    ],
    ids=["wrong-spec", "lying-header", "infinite"],
)
def test_weights_that_do_not_fit_the_experiment_are_rejected_and_removed(
    experiment, client_api, before, stored_files, build, says
):
    body = build()
    session = start(client_api, experiment.pk, body).json()
    send(client_api, session, body)
    refused = complete(client_api, session)
    assert refused.status_code == 400, refused.content
    assert refused.json()["code"] == "invalid_weights"
    assert says in refused.json()["detail"]
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)
    session = UploadSession.objects.get()
    assert (session.state, session.reason) == (UploadState.REJECTED, refused.json()["detail"])


def test_a_declared_size_over_the_limit_is_refused_before_anything_is_stored(
    make_experiment, enroll, stored_files
):
    experiment = make_experiment(max_update_bytes=100)
    client = enroll(experiment)
    before = stored_files()
    refused = start(client, experiment.pk, b"x" * 101)
    assert refused.status_code == 413
    assert (refused.json()["code"], "100" in refused.json()["detail"]) == ("too_large", True)
    assert (UploadSession.objects.count(), stored_files()) == (0, before)


def test_parts_of_the_wrong_size_or_number_are_refused_and_not_kept(experiment, client_api, safetensors):
    body = safetensors(0.5)
    session = start(client_api, experiment.pk, body).json()
    first = session["targets"][0]
    oversized = put(client_api, first, b"x" * (PART + 1))
    assert (oversized.status_code, oversized.json()["code"]) == (413, "too_large")
    short = put(client_api, first, b"x" * (PART - 1))
    assert (short.status_code, short.json()["code"]) == (400, "part_size")
    beyond = dict(first, url=first["url"].replace("/parts/1/", f"/parts/{session['part_count'] + 1}/"))
    out_of_range = put(client_api, beyond, b"x" * PART)
    assert (out_of_range.status_code, out_of_range.json()["code"]) == (400, "invalid_part")
    no_length = client_api.generic("PUT", first["url"], b"", content_type="application/octet-stream")
    assert no_length.status_code == 411
    assert status(client_api, session).json()["parts"] == []


def test_start_and_complete_are_idempotent(experiment, client_api, safetensors):
    body = safetensors(0.5)
    first = start(client_api, experiment.pk, body, idempotency_key="push-1")
    again = start(client_api, experiment.pk, body, idempotency_key="push-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    other_bytes = start(client_api, experiment.pk, safetensors(0.6), idempotency_key="push-1")
    assert other_bytes.status_code == 409
    assert UploadSession.objects.count() == 1

    send(client_api, first.json(), body)
    ids = {complete(client_api, first.json()).json()["id"] for _ in range(3)}
    assert len(ids) == 1
    assert ModelUpdate.objects.count() == 1


def test_an_upload_started_without_its_sha256_is_checked_against_the_one_its_completion_declares(
    experiment, client_api, safetensors, before, stored_files
):
    body = safetensors(0.5)
    started = start_late(client_api, experiment.pk, body, idempotency_key="late")
    assert started.status_code == 201, started.content
    session = started.json()
    assert session["sha256"] == ""
    send(client_api, session, body)

    undeclared = complete(client_api, session)
    assert (undeclared.status_code, undeclared.json()["code"]) == (400, "sha256_required")
    malformed = complete(client_api, session, sha256="not-a-hash")
    assert malformed.status_code == 400
    assert malformed.json()["detail"].startswith("sha256:")
    assert (ModelUpdate.objects.count(), UploadSession.objects.get().state) == (0, UploadState.OPEN)

    sha256 = hashlib.sha256(body).hexdigest()
    done = complete(client_api, session, sha256=sha256.upper())
    assert done.status_code == 201, done.content
    assert done.json()["content_id"] == sha256
    assert (UploadSession.objects.get().sha256, status(client_api, session).json()["sha256"]) == (
        sha256,
        sha256,
    )
    assert len(stored_files()) == len(before) + 1

    # Completing again: with the same hash, or none, the first update; with another, a conflict.
    assert {
        complete(client_api, session, sha256).json()["id"],
        complete(client_api, session).json()["id"],
    } == {done.json()["id"]}
    other = complete(client_api, session, sha256=hashlib.sha256(b"other").hexdigest())
    assert (other.status_code, other.json()["code"]) == (409, "conflict")
    assert (ModelUpdate.objects.count(), len(stored_files())) == (1, len(before) + 1)


def test_a_wrong_sha256_declared_at_completion_rejects_the_upload_and_removes_its_bytes(
    experiment, client_api, safetensors, before, stored_files
):
    body = safetensors(0.5)
    session = start_late(client_api, experiment.pk, body).json()
    send(client_api, session, body)
    refused = complete(client_api, session, sha256=hashlib.sha256(safetensors(0.6)).hexdigest())
    assert (refused.status_code, refused.json()["code"]) == (400, "hash_mismatch")
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)
    assert UploadSession.objects.get().state == UploadState.REJECTED
    again = complete(client_api, session, sha256=hashlib.sha256(body).hexdigest())
    assert (again.status_code, again.json()["code"]) == (409, "upload_rejected")


def test_a_sha256_declared_at_start_and_at_completion_must_be_the_same(experiment, client_api, safetensors):
    body = safetensors(0.5)
    session = start(client_api, experiment.pk, body).json()
    send(client_api, session, body)
    contradicting = complete(client_api, session, sha256=hashlib.sha256(b"other").hexdigest())
    assert (contradicting.status_code, contradicting.json()["code"]) == (400, "hash_mismatch")
    assert (UploadSession.objects.get().state, ModelUpdate.objects.count()) == (UploadState.OPEN, 0)
    done = complete(client_api, session, sha256=hashlib.sha256(body).hexdigest())
    assert done.status_code == 201, done.content


def test_an_idempotency_key_reused_for_other_bytes_is_refused_when_their_hash_comes_late(
    experiment, client_api, safetensors, before, stored_files
):
    body, other = safetensors(0.5), safetensors(0.6)
    assert len(body) == len(other)
    first = start_late(client_api, experiment.pk, body, idempotency_key="twin").json()
    send(client_api, first, body)
    update = complete(client_api, first, sha256=hashlib.sha256(body).hexdigest()).json()

    # The same key and size: the start answers with the first session, completed; its hash decides.
    retry = start_late(client_api, experiment.pk, other, idempotency_key="twin")
    assert (retry.status_code, retry.json()["id"], retry.json()["state"]) == (200, first["id"], "completed")
    reused = complete(client_api, retry.json(), sha256=hashlib.sha256(other).hexdigest())
    assert (reused.status_code, reused.json()["code"]) == (409, "conflict")
    same = complete(client_api, retry.json(), sha256=hashlib.sha256(body).hexdigest())
    assert (same.status_code, same.json()["id"]) == (200, update["id"])
    # A start that declares a hash is compared at once, as before.
    declared = start(client_api, experiment.pk, other, idempotency_key="twin")
    assert declared.status_code == 409
    assert (UploadSession.objects.count(), ModelUpdate.objects.count()) == (1, 1)
    assert len(stored_files()) == len(before) + 1


def test_a_session_resumed_with_other_bytes_is_rejected_at_completion(
    experiment, client_api, safetensors, before, stored_files
):
    body, other = safetensors(0.5), safetensors(0.6)
    session = start_late(client_api, experiment.pk, body, idempotency_key="mixed").json()
    last = session["part_count"]
    send(client_api, session, body, numbers=list(range(1, last)))
    resumed = start_late(client_api, experiment.pk, other, idempotency_key="mixed").json()
    assert resumed["id"] == session["id"]
    send(client_api, resumed, other, numbers=[last])  # the values differ in every part after the header
    refused = complete(client_api, resumed, sha256=hashlib.sha256(other).hexdigest())
    assert (refused.status_code, refused.json()["code"]) == (400, "hash_mismatch")
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)


class Crash(Exception):
    """The server process dies here: its transaction rolls back; what the weight store did stays done."""


def test_a_complete_that_died_after_joining_the_parts_is_completed_again(
    experiment, client_api, safetensors, monkeypatch, before, stored_files
):
    body = safetensors(0.5)
    session = start(client_api, experiment.pk, body, idempotency_key="push-9").json()
    send(client_api, session, body)

    def died(**kwargs):
        raise Crash("the process died after the store joined the parts, before the update was recorded")

    with monkeypatch.context() as crashing:
        crashing.setattr(ingestion, "update_accept", died)
        with pytest.raises(Crash):
            complete(client_api, session)
    assert ModelUpdate.objects.count() == 0

    # Resuming: every part is there (joined), so there is nothing to send; one sent anyway is told so.
    resumed = start(client_api, experiment.pk, body, idempotency_key="push-9")
    assert (resumed.status_code, resumed.json()["id"], resumed.json()["state"]) == (
        200,
        session["id"],
        "open",
    )
    every = [(t["number"], t["size"]) for t in session["targets"]]
    assert [(p["number"], p["size"]) for p in resumed.json()["parts"]] == every
    assert [(p["number"], p["size"]) for p in status(client_api, session).json()["parts"]] == every
    target = session["targets"][0]
    again = put(client_api, target, body[target["offset"] : target["offset"] + target["size"]])
    assert (again.status_code, again.json()["code"]) == (409, "upload_joined")
    assert "complete" in again.json()["detail"]

    done = complete(client_api, session)
    assert done.status_code == 201, done.content
    assert done.json()["content_id"] == hashlib.sha256(body).hexdigest()
    assert b"".join(client_api.get(done.json()["data"]).streaming_content) == body
    assert ModelUpdate.objects.count() == 1
    assert len(stored_files()) == len(before) + 1


def test_another_clients_or_experiments_upload_is_not_found(
    make_experiment, experiment, client_api, enroll, safetensors
):
    body = safetensors(0.5)
    session = start(client_api, experiment.pk, body).json()
    intruder = enroll(experiment)
    elsewhere = make_experiment(name="other")
    enroll_elsewhere = enroll(elsewhere)
    url = f"/api/v1/models/{experiment.pk}/uploads/{session['id']}/"
    wrong_experiment = f"/api/v1/models/{elsewhere.pk}/uploads/{session['id']}/"
    for api, path in [(intruder, url), (enroll_elsewhere, wrong_experiment), (client_api, wrong_experiment)]:
        assert api.get(path).status_code == 404
        assert api.post(path + "complete/").status_code == 404
        assert api.delete(path).status_code == 404
        assert (
            api.generic(
                "PUT", path + "parts/1/", b"x" * PART, content_type="application/octet-stream"
            ).status_code
            == 404
        )
    assert UploadSession.objects.get().state == UploadState.OPEN


def test_a_developer_cannot_upload_and_a_revoked_client_is_refused(
    experiment, client_api, dev_api, safetensors
):
    body = safetensors(0.5)
    assert start(dev_api, experiment.pk, body).status_code == 403
    session = start(client_api, experiment.pk, body).json()
    send(client_api, session, body, numbers=[1])
    services.enrollment_revoke(
        experiment=experiment, client=UploadSession.objects.get().client, user=experiment.developer
    )
    assert complete(client_api, session).status_code == 404
    services.client_revoke(client=UploadSession.objects.get().client)
    assert complete(client_api, session).status_code == 401
    assert ModelUpdate.objects.count() == 0


def test_an_aborted_upload_drops_its_parts(experiment, client_api, safetensors, before, stored_files):
    body = safetensors(0.5)
    session = start(client_api, experiment.pk, body).json()
    send(client_api, session, body, numbers=[1, 2])
    aborted = client_api.delete(f"/api/v1/models/{experiment.pk}/uploads/{session['id']}/")
    assert (aborted.status_code, aborted.json()["state"]) == (200, "aborted")
    assert stored_files() == before
    late = put(client_api, session["targets"][2], body[2 * PART : 3 * PART])
    assert (late.status_code, late.json()["code"]) == (409, "upload_aborted")


def test_the_sweep_expires_uploads_left_open(
    settings, experiment, client_api, safetensors, before, stored_files
):
    body = safetensors(0.5)
    stale = start(client_api, experiment.pk, body).json()
    send(client_api, stale, body, numbers=[1])
    UploadSession.objects.filter(uuid=stale["id"]).update(created_on=timezone.now() - timedelta(hours=25))
    fresh = start(client_api, experiment.pk, safetensors(0.6)).json()

    assert housekeeping_sweep(lease_seconds=900) == {
        "uploads_expired": 1,
        "uploads_checking": 0,
        "update_weights_removed": 0,
        "orphans_removed": 0,
        "secure_rounds_advanced": 0,
        "secure_rounds_summing": 0,
    }
    assert status(client_api, stale).json()["state"] == "expired"
    assert status(client_api, fresh).json()["state"] == "open"
    fresh_upload = UploadSession.objects.get(uuid=fresh["id"]).store_upload_id
    assert {Path(name).parts[:2] for name in set(stored_files()) - set(before)} == {
        (".uploads", fresh_upload)
    }
    assert complete(client_api, stale).json()["code"] == "upload_expired"
    assert Event.objects.filter(kind=EventKind.UPLOAD_EXPIRED).count() == 1


def test_retention_removes_consumed_update_bytes_and_downloads_answer_410(
    settings, experiment, client_api, dev_api, admin_client, safetensors, stored_files
):
    body = safetensors(0.5)
    session = start(client_api, experiment.pk, body).json()
    send(client_api, session, body)
    update = complete(client_api, session).json()
    pending = start(client_api, experiment.pk, safetensors(0.6)).json()  # not aggregated: kept
    send(client_api, pending, safetensors(0.6))
    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    assert outcome.status == "committed"
    later = complete(client_api, pending).json()

    assert (
        housekeeping_sweep(lease_seconds=900)["update_weights_removed"] == 0
    )  # retention unset: keep forever
    settings.FMA_UPDATE_RETENTION_DAYS = 30
    assert housekeeping_sweep(lease_seconds=900)["update_weights_removed"] == 0  # the round is recent
    ModelUpdate.objects.get(pk=update["id"]).aggregate.__class__.objects.update(
        created_on=timezone.now() - timedelta(days=31)
    )
    assert housekeeping_sweep(lease_seconds=900)["update_weights_removed"] == 1
    removed = ModelUpdate.objects.get(pk=update["id"])
    assert removed.weights_removed_on is not None
    assert removed.content_id == update["content_id"]
    assert not weight_store().exists(removed.weights_key)
    assert weight_store().exists(ModelUpdate.objects.get(pk=later["id"]).weights_key)

    for api in (client_api, dev_api):
        gone = api.get(update["data"])
        assert (gone.status_code, gone.json()["code"]) == (410, "weights_removed")
        assert update["content_id"] in gone.json()["detail"]
    aggregate = client_api.get(f"/api/v1/model_aggregates/{removed.aggregate_id}/weights/")
    assert aggregate.status_code == 200
    assert client_api.get(f"/api/v1/model_updates/{update['id']}/").json()["weights_removed_on"]
    assert admin_client.get(f"/admin/fma_django/modelupdate/{update['id']}/change/").status_code == 200
    assert admin_client.get("/admin/fma_django/uploadsession/").status_code == 200


def test_the_schema_documents_the_upload_endpoints(dev_api):
    schema = dev_api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    prefix = "/api/v1/models/{experiment_pk}/uploads/"
    assert {
        prefix,
        prefix + "{upload_id}/",
        prefix + "{upload_id}/parts/{number}/",
        prefix + "{upload_id}/complete/",
    } <= set(schema["paths"])
    assert set(schema["paths"][prefix + "{upload_id}/"]) >= {"get", "delete"}


def complete_over_http(base_url: str, path: str, credential: str, go: threading.Event) -> tuple[int, int]:
    go.wait()
    try:
        response = requests.post(
            base_url + path, headers={"Authorization": f"Client {credential}"}, timeout=60
        )
        return response.status_code, response.json().get("id", response.text)
    finally:
        connections.close_all()


def test_concurrent_completes_create_one_update(
    require_postgresql, transactional_db, live_server, weights_dir, developer, settings
):
    experiment = services.experiment_create(
        developer=developer, name="race", initial_model={"w": np.zeros(64, np.float32)}
    )
    _, token = services.enrollment_token_issue(experiment=experiment, user=developer)
    registered = requests.post(
        f"{live_server.url}/api/v1/models/{experiment.pk}/register_client/",
        json={"enrollment_token": token},
        timeout=60,
    ).json()
    http = requests.Session()
    http.headers["Authorization"] = f"Client {registered['credential']}"
    body = to_bytes({"w": np.ones(64, np.float32)})
    session = http.post(
        f"{live_server.url}/api/v1/models/{experiment.pk}/uploads/",
        json={"size": len(body), "sha256": hashlib.sha256(body).hexdigest()},
        timeout=60,
    ).json()
    for target in session["targets"]:
        part = body[target["offset"] : target["offset"] + target["size"]]
        assert http.put(target["url"], data=part, headers=target["headers"], timeout=60).status_code == 200
    go = threading.Event()
    path = f"/api/v1/models/{experiment.pk}/uploads/{session['id']}/complete/"
    with ThreadPoolExecutor(6) as pool:
        racing = [
            pool.submit(complete_over_http, live_server.url, path, registered["credential"], go)
            for _ in range(6)
        ]
        go.set()
        answers = [r.result() for r in racing]
    assert sorted(code for code, _ in answers) == [200] * 5 + [201], answers
    assert len({update for _, update in answers}) == 1
    assert ModelUpdate.objects.filter(experiment=experiment).count() == 1
    assert Event.objects.filter(kind=EventKind.UPDATE_ACCEPTED).count() == 1


def test_a_store_failing_while_a_complete_request_checks_answers_503_and_refuses_nothing(
    experiment, client_api, safetensors, monkeypatch
):
    body = safetensors(0.5)
    session = start(client_api, experiment.pk, body).json()
    send(client_api, session, body)
    store = weight_store()
    opened = store.open
    failures = [StoreUnavailable("the S3 store failed: InternalError (HTTP 500) in GetObject")]

    def open_once_failing(key):
        if failures:
            raise failures.pop()
        return opened(key)

    monkeypatch.setattr(store, "open", open_once_failing)
    failed = complete(client_api, session)
    assert failed.status_code == 503, failed.content
    assert failed.json()["code"] == "store_unavailable"
    assert int(failed.headers["Retry-After"]) > 0
    assert "S3" not in failed.json()["detail"]  # the store's details stay in the server's log
    assert status(client_api, session).json()["state"] == "open"
    assert not Event.objects.filter(kind=EventKind.UPDATE_REJECTED).exists()

    done = complete(client_api, session)  # the client's retry
    assert done.status_code == 201, done.content
    assert done.json()["content_id"] == hashlib.sha256(body).hexdigest()
