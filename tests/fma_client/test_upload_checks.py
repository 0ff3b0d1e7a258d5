"""``Client.push`` against a live service that checks large uploads after completing them (202, state
``checking``): the in-process runner checks them in a background thread of the server while the
client polls; a refusal raises as a synchronous one does; a check that does not end in time raises CheckTimeout, and
pushing again with the same idempotency key gets the update once it is accepted."""

from __future__ import annotations

import numpy as np
import pytest

from fma_client import CheckTimeout, Client, ValidationError
from fma_django import ingestion
from fma_django.models import ModelUpdate, UploadSession

from .test_uploads import trained

pytestmark = pytest.mark.usefixtures("upload_sessions_only")  # these test the upload-session path


def test_push_waits_for_the_servers_check_and_returns_the_accepted_update(
    server, experiment, enrollment_token, checked_later, inprocess
):
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        update = client.push(trained(1.5), num_examples=4)
    assert update["id"] == ModelUpdate.objects.get().pk
    assert update["num_examples"] == 4
    assert UploadSession.objects.get().state == "completed"


def test_a_refusal_by_the_servers_check_raises_the_synchronous_error(
    server, experiment, enrollment_token, checked_later, inprocess
):
    wrong = {**trained(1.5), "extra": np.zeros(2, np.float32)}
    client = Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True)
    with client, pytest.raises(ValidationError) as refused:
        client.push(wrong, num_examples=4)
    assert refused.value.code == "invalid_weights"
    assert refused.value.detail == UploadSession.objects.get().reason
    assert not ModelUpdate.objects.exists()


def test_a_check_that_does_not_end_in_time_raises_check_timeout_naming_the_upload(
    server, experiment, enrollment_token, checked_later
):
    # FMA_AGGREGATOR_RUNNER is "none" in the tests: nothing checks the upload.
    client = Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True)
    with client, pytest.raises(CheckTimeout) as late:
        client.push(trained(1.5), num_examples=4, idempotency_key="push-9", check_timeout=1.0)
    session = UploadSession.objects.get()
    assert session.state == "checking"
    assert str(session.uuid) in str(late.value)
    assert "may still complete" in str(late.value)
    assert "push-9" in str(late.value)

    with client, pytest.raises(CheckTimeout):  # pushed again while still checking: it waits again
        client.push(trained(1.5), num_examples=4, idempotency_key="push-9", check_timeout=0.5)

    ingestion.upload_check(session.uuid)  # a runner gets to it later
    with client:
        update = client.push(trained(1.5), num_examples=4, idempotency_key="push-9", check_timeout=1.0)
    assert update["id"] == ModelUpdate.objects.get().pk
