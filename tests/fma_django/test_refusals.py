"""How a refusal is typed, answered and cleaned up: each domain error's status comes from the one
handler (``api.exceptions``), and ``storage.removed_on_failure`` leaves no bytes of a failed block."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rest_framework.response import Response

from fma_core.errors import ObjectNotFound
from fma_django import errors, ingestion, services
from fma_django.api.exceptions import exception_handler
from fma_django.errors import DomainError, TooLarge, ValidationFailed
from fma_django.models import Event, EventKind, ModelUpdate
from fma_django.storage import removed_on_failure, weight_store


def domain_errors(kind: type[DomainError] = DomainError) -> list[type[DomainError]]:
    """``kind`` and every error type below it, so that a new one cannot go unmapped."""
    return [kind, *(sub for child in kind.__subclasses__() for sub in domain_errors(child))]


STATUS = {
    errors.DomainError: 400,
    errors.ValidationFailed: 400,
    errors.WeightsInvalid: 400,
    errors.UploadIncomplete: 400,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.DuplicateName: 409,
    errors.NotSelected: 409,
    errors.Gone: 410,
    errors.LengthRequired: 411,
    errors.TooLarge: 413,
}


def answer(error: Exception) -> Response:
    response = exception_handler(error, {})
    assert response is not None
    return response


@pytest.mark.parametrize("kind", domain_errors(), ids=lambda kind: kind.__name__)
def test_every_domain_error_answers_its_4xx_with_its_code(kind: type[DomainError]):
    response = answer(kind("what to fix"))
    assert 400 <= response.status_code < 500
    assert (response.status_code, response.data) == (
        STATUS[kind],
        {"detail": "what to fix", "code": kind.code},
    )


def test_a_client_not_selected_is_told_when_to_ask_again_in_retry_after():
    response = answer(errors.NotSelected("not this round", retry_after=30))
    assert (response.status_code, response.data["code"], response["Retry-After"]) == (
        409,
        "not_selected",
        "30",
    )
    assert "Retry-After" not in answer(errors.Conflict("taken"))


def test_a_code_given_when_raised_replaces_the_types_and_keeps_its_status():
    response = answer(errors.Conflict("send no more parts", code="upload_joined"))
    assert (response.status_code, response.data["code"]) == (409, "upload_joined")


@pytest.fixture
def key(weights_dir: Path) -> str:
    weight_store().put("updates/1/object.safetensors", io.BytesIO(b"bytes"))
    return "updates/1/object.safetensors"


def test_an_object_is_kept_when_the_block_succeeds(key: str):
    with removed_on_failure(key):
        pass
    assert weight_store().exists(key)


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt, ValidationFailed])
def test_an_object_is_removed_when_the_block_fails_whatever_the_failure(
    key: str, failure: type[BaseException]
):
    with pytest.raises(failure), removed_on_failure(key):
        raise failure("the request failed")
    assert not weight_store().exists(key)


def test_only_the_failures_named_remove_the_object(key: str):
    with pytest.raises(RuntimeError), removed_on_failure(key, on=DomainError):
        raise RuntimeError("a transient error: completing again resumes with the object")
    assert weight_store().exists(key)
    with pytest.raises(ValidationFailed), removed_on_failure(key, on=DomainError):
        raise ValidationFailed("refused")
    assert not weight_store().exists(key)


def test_a_failed_block_aborts_the_multipart_upload_it_names(weights_dir: Path):
    store = weight_store()
    upload_id = store.start_upload("updates/1/parts.safetensors", [4])
    store.put_part("updates/1/parts.safetensors", upload_id, 1, io.BytesIO(b"part"))
    with pytest.raises(RuntimeError), removed_on_failure("updates/1/parts.safetensors", upload_id=upload_id):
        raise RuntimeError("the session was not saved")
    with pytest.raises(ObjectNotFound):
        store.uploaded_parts("updates/1/parts.safetensors", upload_id)


def test_a_stream_of_no_declared_length_is_refused_as_too_large_once_past_the_limit(
    make_experiment, safetensors, stored_files
):
    experiment = make_experiment(max_update_bytes=64, open_enrollment=True)
    client, _ = services.client_register(experiment=experiment)
    before = stored_files()
    with pytest.raises(TooLarge) as refused:
        ingestion.update_submit(experiment=experiment, client=client, stream=io.BytesIO(safetensors(1.0)))
    assert (refused.value.code, "64" in refused.value.detail) == ("too_large", True)
    assert (ModelUpdate.objects.count(), stored_files()) == (0, before)
    assert Event.objects.get(kind=EventKind.UPDATE_REJECTED).detail["reason"] == refused.value.detail
