"""A small update goes in one request (``fma_client.single``), with every guarantee of an upload
session: the idempotency key, the declared hash checked against the bytes, the experiment's checks,
exactly once; a larger one still goes through a session. Against the live service."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import requests

from fma_client import Client, ServerUnavailable, ValidationError
from fma_client.weights import encode
from fma_django.models import ModelUpdate, UploadSession

from .conftest import INITIAL


def trained(value: float) -> dict[str, np.ndarray]:
    return {name: np.full_like(array, value) for name, array in INITIAL.items()}


def test_a_small_push_is_one_request_and_the_update_is_its_bytes(
    server, experiment, enrollment_token, requests_seen
):
    weights = trained(1.5)
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        requests_seen.clear()
        update = client.push(weights, num_examples=5, metrics={"loss": 0.25})
    assert requests_seen == [("POST", f"/api/v1/models/{experiment.pk}/upload_update/")]
    assert (update["num_examples"], update["metrics"]) == (5, {"loss": 0.25})
    assert update["content_id"] == hashlib.sha256(encode(weights)).hexdigest()
    assert UploadSession.objects.count() == 0


def test_a_larger_push_goes_through_an_upload_session(server, experiment, enrollment_token, requests_seen):
    weights = trained(2.0)
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        client.single_request_bytes = len(encode(weights)) - 1
        update = client.push(weights, num_examples=1)
    assert any(path.endswith("/complete/") for _, path in requests_seen)
    assert UploadSession.objects.get().state == "completed"
    assert ModelUpdate.objects.get().pk == update["id"]


def test_pushing_again_with_the_key_counts_the_update_once(server, experiment, enrollment_token):
    weights = trained(3.0)
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        first = client.push(weights, num_examples=2, idempotency_key="small-1")
        again = client.push(weights, num_examples=2, idempotency_key="small-1")
    assert again["id"] == first["id"]
    assert ModelUpdate.objects.filter(idempotency_key="small-1").count() == 1


def test_a_push_whose_answer_was_lost_is_counted_once_when_sent_again_with_the_key_its_error_names(
    server, experiment, enrollment_token, monkeypatch
):
    """The server accepted the update, then the connection broke before the answer: the error names
    the key, and pushing again with it returns the first update."""
    weights = trained(4.0)
    client = Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True)
    original = requests.Session.request

    def answer_lost(self, method, url, **kwargs):
        response = original(self, method, url, **kwargs)
        if url.endswith("/upload_update/"):
            response.close()
            raise requests.ConnectionError("connection reset after the server answered")
        return response

    monkeypatch.setattr(requests.Session, "request", answer_lost)
    with pytest.raises(ServerUnavailable) as lost:
        client.push(weights, num_examples=1)
    assert ModelUpdate.objects.count() == 1  # accepted, though the client did not hear it (every retry too)
    monkeypatch.setattr(requests.Session, "request", original)
    with client:
        update = client.push(weights, num_examples=1, idempotency_key=lost.value.idempotency_key)
    assert ModelUpdate.objects.get().pk == update["id"]


def test_a_body_that_does_not_match_its_declared_hash_is_refused_and_nothing_kept(
    server, experiment, enrollment_token
):
    client = Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True)
    body = encode(trained(5.0))
    answer = requests.post(
        f"{server}/api/v1/models/{experiment.pk}/upload_update/",
        data=body,
        headers={
            "Authorization": f"Client {client.token}",
            "X-FMA-SHA256": hashlib.sha256(b"other").hexdigest(),
        },
        timeout=30,
    )
    assert (answer.status_code, answer.json()["code"]) == (400, "hash_mismatch")
    assert ModelUpdate.objects.count() == 0
    client.close()


def test_weights_the_experiment_does_not_take_are_refused_in_one_request_too(
    server, experiment, enrollment_token, requests_seen
):
    wrong = {name: np.zeros(array.size + 1, array.dtype) for name, array in INITIAL.items()}
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        requests_seen.clear()
        with pytest.raises(ValidationError):
            client.push(wrong, num_examples=1)
    assert [path for _, path in requests_seen] == [f"/api/v1/models/{experiment.pk}/upload_update/"]
    assert ModelUpdate.objects.count() == 0
