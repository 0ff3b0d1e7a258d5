"""A push interrupted at any point is finished by pushing again with the same idempotency key, which the
error of the push that gave up names; and a one-off interruption is recovered by the push itself.

The live server "crashes" at each point of a push: an exception there answers 500 and rolls back the
request's transaction, which is what a killed server process leaves too (the database as it was, the
weight store as far as it got). Only the crash is injected; the rest is the real client and server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pytest

from fma_client import Client, FmaClientError, Retry
from fma_client.weights import encode
from fma_django import ingestion
from fma_django.models import ModelUpdate, UploadSession
from fma_django.storage import weight_store

from .conftest import INITIAL

pytestmark = pytest.mark.usefixtures("upload_sessions_only")  # these test the upload-session path

PART = 32


class Crash(Exception):
    """The server process dies here."""


class Fault:
    """Crashes whenever it is hit, or (``once``) only the first time; ``fixed`` stops it."""

    def __init__(self, *, once: bool) -> None:
        self.once = once
        self.fixed = False
        self.crashes = 0

    def hit(self) -> None:
        if not self.fixed and (not self.once or not self.crashes):
            self.crashes += 1
            raise Crash(f"the server died ({self.crashes})")


def after_create(fault: Fault, monkeypatch) -> None:
    """The session exists; no part arrives."""
    put = ingestion.upload_part_put

    def crashing(**kwargs):
        fault.hit()
        return put(**kwargs)

    monkeypatch.setattr(ingestion, "upload_part_put", crashing)


def after_some_parts(fault: Fault, monkeypatch) -> None:
    """Parts 1 and 2 arrive, the others do not."""
    put = ingestion.upload_part_put

    def crashing(*, number: int, **kwargs):
        if number > 2:
            fault.hit()
        return put(number=number, **kwargs)

    monkeypatch.setattr(ingestion, "upload_part_put", crashing)


def after_all_parts(fault: Fault, monkeypatch) -> None:
    """Every part arrived; the complete request dies as it starts."""
    complete = ingestion.upload_complete

    def crashing(**kwargs):
        fault.hit()
        return complete(**kwargs)

    monkeypatch.setattr(ingestion, "upload_complete", crashing)


def in_complete_before_join(fault: Fault, monkeypatch) -> None:
    """The complete request dies as the store is about to join the parts."""
    store = weight_store()
    join = store.complete_upload

    def crashing(*args, **kwargs):
        fault.hit()
        return join(*args, **kwargs)

    monkeypatch.setattr(store, "complete_upload", crashing)


def after_join_before_record(fault: Fault, monkeypatch) -> None:
    """The store joined the parts into the object and they were checked; the update is not recorded."""
    accept = ingestion.update_accept

    def crashing(**kwargs):
        fault.hit()
        return accept(**kwargs)

    monkeypatch.setattr(ingestion, "update_accept", crashing)


def after_record_before_response(fault: Fault, monkeypatch) -> None:
    """The update and the completed session are committed; the answer never leaves."""
    complete = ingestion.upload_complete

    def crashing(**kwargs):
        completion = complete(**kwargs)
        fault.hit()
        return completion

    monkeypatch.setattr(ingestion, "upload_complete", crashing)


POINTS = [
    after_create,
    after_some_parts,
    after_all_parts,
    in_complete_before_join,
    after_join_before_record,
    after_record_before_response,
]


@pytest.fixture
def small_parts(settings) -> None:
    settings.FMA_UPLOAD_PART_BYTES = PART


@pytest.fixture
def client(server, experiment, enrollment_token, small_parts) -> Client:
    with Client.enroll(
        server,
        experiment.pk,
        enrollment_token=enrollment_token,
        quiet=True,
        retry=Retry(attempts=2, backoff=0),
    ) as enrolled:
        yield enrolled


def trained() -> dict[str, np.ndarray]:
    return {name: np.full_like(array, 1.25) for name, array in INITIAL.items()}


def assert_one_update_of(blob: bytes, update: dict) -> None:
    [stored] = ModelUpdate.objects.all()
    assert stored.pk == update["id"]
    assert update["content_id"] == stored.content_id == hashlib.sha256(blob).hexdigest()
    with weight_store().open(stored.weights_key) as stream:
        assert stream.read() == blob
    assert UploadSession.objects.get().update_id == stored.pk


@pytest.mark.parametrize("point", POINTS, ids=lambda point: point.__name__)
def test_a_push_given_up_at_any_point_is_finished_by_pushing_again_with_the_key_its_error_names(
    client: Client, point: Callable, monkeypatch
):
    fault = Fault(once=False)
    point(fault, monkeypatch)
    weights = trained()
    with pytest.raises(FmaClientError) as failed:
        client.push(weights, num_examples=3)
    assert fault.crashes > 0
    key = failed.value.idempotency_key
    assert key
    assert f"idempotency_key={key!r}" in str(failed.value)

    fault.fixed = True  # the server is back
    update = client.push(weights, num_examples=3, idempotency_key=key)
    assert_one_update_of(encode(weights), update)
    assert (update["idempotency_key"], update["num_examples"]) == (key, 3)


@pytest.mark.parametrize("point", POINTS, ids=lambda point: point.__name__)
def test_a_push_interrupted_once_at_any_point_recovers_by_itself(
    client: Client, point: Callable, monkeypatch
):
    fault = Fault(once=True)
    point(fault, monkeypatch)
    weights = trained()
    update = client.push(weights, num_examples=3)
    assert fault.crashes == 1
    assert_one_update_of(encode(weights), update)
