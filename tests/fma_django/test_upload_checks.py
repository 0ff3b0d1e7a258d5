"""Uploads above FMA_UPLOAD_INLINE_CHECK_BYTES: complete answers 202 and the session waits in
``checking`` until ``upload_check`` (a runner's job) accepts or refuses it; the sweep hands out again
every check left waiting. The runners themselves are tested in tests/aggregator/test_upload_checks.py."""

from __future__ import annotations

import hashlib
import threading

import pytest
from django.db import connections, transaction

from fma_django import ingestion
from fma_django.housekeeping import housekeeping_sweep
from fma_django.models import Event, EventKind, ModelUpdate, UploadSession, UploadState
from fma_django.signals import upload_check_requested

from .test_api_uploads import PART, complete, send, start, start_late, status


@pytest.fixture(autouse=True)
def small_parts(settings):
    settings.FMA_UPLOAD_PART_BYTES = PART


@pytest.fixture
def requested():
    """The upload ids the API hands to the runner (``upload_check_requested``), as a runner receives them."""
    sent: list[str] = []

    def receive(*, upload_id: str, **kwargs: object) -> None:
        sent.append(upload_id)

    upload_check_requested.connect(receive, weak=False, dispatch_uid="test.requested")
    yield sent
    upload_check_requested.disconnect(dispatch_uid="test.requested")


@pytest.fixture
def before(stored_files, experiment):
    return stored_files()


def status_path(session) -> str:
    return f"/api/v1/models/{session['federated_model']}/uploads/{session['id']}/"


def sent_and_completed(api, experiment, body, **fields):
    session = start(api, experiment.pk, body, **fields).json()
    send(api, session, body)
    return session, complete(api, session)


@pytest.mark.parametrize("right", [True, False], ids=["its-hash", "another-hash"])
def test_the_runner_checks_a_large_upload_against_the_sha256_its_completion_declared(
    checked_later, experiment, client_api, safetensors, before, stored_files, right
):
    body = safetensors(0.25)
    session = start_late(client_api, experiment.pk, body).json()
    send(client_api, session, body)
    declared = hashlib.sha256(body if right else safetensors(0.3)).hexdigest()
    accepted = complete(client_api, session, sha256=declared)
    assert (accepted.status_code, accepted.json()["sha256"]) == (202, declared)
    other = complete(client_api, session, sha256=hashlib.sha256(b"other").hexdigest())
    assert (other.status_code, other.json()["code"]) == (409, "conflict")

    checked = ingestion.upload_check(session["id"])
    if right:
        assert (checked.state, ModelUpdate.objects.get().content_id) == (UploadState.COMPLETED, declared)
    else:
        assert (checked.state, checked.reason_code) == (UploadState.REJECTED, "hash_mismatch")
        assert (ModelUpdate.objects.count(), stored_files()) == (0, before)


def test_a_large_upload_is_checked_after_its_complete_request_answers_202(
    checked_later,
    experiment,
    client_api,
    safetensors,
    before,
    stored_files,
    django_capture_on_commit_callbacks,
):
    body = safetensors(0.25)
    assert len(body) > 100
    with django_capture_on_commit_callbacks() as callbacks:
        session, accepted = sent_and_completed(client_api, experiment, body, num_examples=3)
    assert accepted.status_code == 202, accepted.content
    assert (accepted.json()["id"], accepted.json()["state"], accepted.json()["update"]) == (
        session["id"],
        "checking",
        None,
    )
    assert len(callbacks) == 1  # the check is announced once the state has committed
    assert (ModelUpdate.objects.count(), Event.objects.filter(kind=EventKind.UPDATE_ACCEPTED).count()) == (
        0,
        0,
    )
    shown = status(client_api, session).json()
    assert (shown["state"], shown["parts"], shown["targets"]) == ("checking", [], [])
    again = complete(client_api, session)
    assert (again.status_code, again.json()["state"]) == (202, "checking")
    late_part = client_api.generic("PUT", f"{status_path(session)}parts/1/", body[:PART])
    aborted = client_api.delete(status_path(session))
    assert [(r.status_code, r.json()["code"]) for r in (late_part, aborted)] == [(409, "upload_checking")] * 2

    checked = ingestion.upload_check(session["id"])
    assert (checked.state, checked.reason) == (UploadState.COMPLETED, "")
    update = ModelUpdate.objects.get()
    assert (update.num_examples, update.content_id) == (3, hashlib.sha256(body).hexdigest())
    assert Event.objects.filter(kind=EventKind.UPDATE_ACCEPTED).count() == 1
    assert len(stored_files()) == len(before) + 1

    shown = status(client_api, session).json()
    assert (shown["state"], shown["update"]["id"]) == ("completed", update.pk)
    after = complete(client_api, session)
    assert (after.status_code, after.json()["id"]) == (200, update.pk)
    assert ingestion.upload_check(session["id"]) is None  # no longer checking: nothing to do
    assert ModelUpdate.objects.count() == 1


def test_a_corrupt_large_upload_is_rejected_by_its_check_and_removed(
    checked_later, experiment, client_api, safetensors, before, stored_files
):
    body = safetensors(0.5)
    session, accepted = sent_and_completed(
        client_api, experiment, body, sha256=hashlib.sha256(safetensors(0.6)).hexdigest()
    )
    assert accepted.status_code == 202, accepted.content

    checked = ingestion.upload_check(session["id"])
    assert (checked.state, checked.reason_code) == (UploadState.REJECTED, "hash_mismatch")
    assert "SHA-256" in checked.reason
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)
    assert Event.objects.filter(kind=EventKind.UPDATE_REJECTED).count() == 1
    shown = status(client_api, session).json()
    assert (shown["state"], shown["reason"], shown["reason_code"]) == (
        "rejected",
        checked.reason,
        "hash_mismatch",
    )
    again = complete(client_api, session)
    assert (again.status_code, again.json()["code"]) == (409, "upload_rejected")
    assert checked.reason in again.json()["detail"]


def test_weights_that_do_not_fit_are_rejected_by_the_check_with_the_inline_code(
    checked_later, experiment, client_api, weights, before, stored_files
):
    from fma_core.weights import to_bytes

    body = to_bytes({**weights(0.5), "extra": weights(0.5)["bias"]})
    session, accepted = sent_and_completed(client_api, experiment, body)
    assert accepted.status_code == 202, accepted.content
    checked = ingestion.upload_check(session["id"])
    assert (checked.state, checked.reason_code) == (UploadState.REJECTED, "invalid_weights")
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)


def test_missing_parts_are_reported_by_the_complete_request_and_the_upload_stays_open(
    checked_later, experiment, client_api, safetensors
):
    body = safetensors(0.75)
    session = start(client_api, experiment.pk, body).json()
    send(client_api, session, body, numbers=[1])
    refused = complete(client_api, session)
    assert (refused.status_code, refused.json()["code"]) == (400, "incomplete_upload")
    assert UploadSession.objects.get().state == UploadState.OPEN
    send(client_api, session, body)
    assert complete(client_api, session).status_code == 202


def test_an_upload_at_or_under_the_limit_is_still_checked_in_its_request(
    settings, experiment, client_api, safetensors
):
    body = safetensors(0.25)
    settings.FMA_UPLOAD_INLINE_CHECK_BYTES = len(body)
    _, done = sent_and_completed(client_api, experiment, body)
    assert done.status_code == 201, done.content
    assert UploadSession.objects.get().state == UploadState.COMPLETED


def test_the_sweep_hands_a_check_left_by_a_killed_worker_to_the_runner_again(
    experiment, client_api, safetensors, requested
):
    body = safetensors(0.25)
    session = start(client_api, experiment.pk, body).json()
    send(client_api, session, body)
    # A worker died mid-check: its transaction rolled back, the session is still "checking".
    UploadSession.objects.filter(uuid=session["id"]).update(state=UploadState.CHECKING)

    assert housekeeping_sweep(lease_seconds=900)["uploads_checking"] == 1
    assert requested == [session["id"]]
    assert ingestion.upload_check(requested[0]).state == UploadState.COMPLETED
    assert housekeeping_sweep(lease_seconds=900)["uploads_checking"] == 0
    assert requested == [session["id"]]


def test_a_check_skips_a_session_another_runner_is_checking(
    require_postgresql, transactional_db, checked_later, experiment, client_api, safetensors
):
    body = safetensors(0.25)
    session, accepted = sent_and_completed(client_api, experiment, body)
    assert accepted.status_code == 202
    locked, release = threading.Event(), threading.Event()

    def other_runner() -> None:
        try:
            with transaction.atomic():
                UploadSession.objects.select_for_update().get(uuid=session["id"])
                locked.set()
                release.wait(60)
        finally:
            connections.close_all()

    holder = threading.Thread(target=other_runner)
    holder.start()
    try:
        assert locked.wait(60)
        assert ingestion.upload_check(session["id"]) is None  # skipped at once, not waited for
    finally:
        release.set()
        holder.join(60)
    assert ingestion.upload_check(session["id"]).state == UploadState.COMPLETED


def test_the_schema_documents_the_checking_state_and_the_202(dev_api):
    schema = dev_api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    complete_path = schema["paths"]["/api/v1/models/{experiment_pk}/uploads/{upload_id}/complete/"]
    assert {"200", "201", "202"} <= set(complete_path["post"]["responses"])
    state = schema["components"]["schemas"]["UploadSession"]["properties"]["state"]
    enum = state["allOf"][0]["$ref"].rsplit("/", 1)[1]
    assert "checking" in schema["components"]["schemas"][enum]["enum"]
