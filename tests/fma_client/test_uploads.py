"""``Client.push`` and ``push_file`` through upload sessions, against the live service in small parts:
what the server received, part by part, and a push that resumes an interrupted upload."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from django.core.signals import request_started

from fma_client import Client, ConflictError, ValidationError, uploads, write_file
from fma_client.weights import encode
from fma_django.models import ModelUpdate, UploadSession

from .conftest import INITIAL

pytestmark = pytest.mark.usefixtures("upload_sessions_only")  # these test the upload-session path

PART = 32


@pytest.fixture
def small_parts(settings) -> None:
    settings.FMA_UPLOAD_PART_BYTES = PART


@pytest.fixture
def received_parts() -> Iterator[list[int]]:
    """The part numbers the live server was sent, in the order the requests arrived."""
    numbers: list[int] = []

    def record(environ, **kwargs) -> None:
        path = environ["PATH_INFO"]
        if environ["REQUEST_METHOD"] == "PUT" and "/parts/" in path:
            numbers.append(int(path.rstrip("/").rsplit("/", 1)[1]))

    request_started.connect(record)
    yield numbers
    request_started.disconnect(record)


def trained(value: float) -> dict[str, np.ndarray]:
    return {name: np.full_like(array, value) for name, array in INITIAL.items()}


@pytest.fixture
def bytes_read(monkeypatch) -> list[int]:
    """The bytes every reader of a pushed file returned, in all (each part's reader, each pass)."""
    counted = [0]
    plain_open = uploads.FileSource.open

    class Counting:
        def __init__(self, reader) -> None:
            self._reader = reader

        def read(self, size: int = -1) -> bytes:
            data = self._reader.read(size)
            counted[0] += len(data)
            return data

        def seek(self, *args) -> int:
            return self._reader.seek(*args)

        def close(self) -> None:
            self._reader.close()

    monkeypatch.setattr(uploads.FileSource, "open", lambda self: Counting(plain_open(self)))
    return counted


def test_push_sends_each_part_once_in_parallel_and_the_update_is_the_bytes(
    server, experiment, enrollment_token, small_parts, received_parts
):
    weights = trained(1.5)
    blob = encode(weights)
    with Client.enroll(
        server, experiment.pk, enrollment_token=enrollment_token, quiet=True, threads=3
    ) as client:
        update = client.push(weights, num_examples=5, metrics={"loss": 0.1})
    count = -(-len(blob) // PART)
    assert count > 3
    assert sorted(received_parts) == list(range(1, count + 1))
    assert (update["num_examples"], update["metrics"]) == (5, {"loss": 0.1})
    assert update["content_id"] == hashlib.sha256(blob).hexdigest()
    assert UploadSession.objects.get().state == "completed"


@pytest.mark.parametrize("declared", [True, False], ids=["sha256-at-start", "sha256-at-completion"])
def test_a_push_resumes_an_interrupted_upload_sending_only_the_missing_parts(
    server, experiment, enrollment_token, small_parts, received_parts, bytes_read, tmp_path, declared
):
    weights = trained(2.5)
    path = tmp_path / "update.safetensors"
    write_file(weights, path)
    blob = path.read_bytes()
    client = Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True)
    # A first push that died after two parts: its session holds parts 1 and 3 (an older client
    # declared the SHA-256 at the start; this one declares it when it completes).
    http = requests.Session()
    http.headers["Authorization"] = f"Client {client.token}"
    start = {"size": len(blob), "idempotency_key": "push-7"}
    if declared:
        start["sha256"] = hashlib.sha256(blob).hexdigest()
    session = http.post(f"{server}/api/v1/models/{experiment.pk}/uploads/", json=start, timeout=30).json()
    for target in session["targets"][0], session["targets"][2]:
        part = blob[target["offset"] : target["offset"] + target["size"]]
        assert http.put(target["url"], data=part, headers=target["headers"], timeout=30).status_code == 200
    received_parts.clear()

    with client:
        update = client.push_file(path, num_examples=1, idempotency_key="push-7")
    assert sorted(received_parts) == [n for n in range(1, session["part_count"] + 1) if n not in (1, 3)]
    assert bytes_read[0] == len(blob)  # parts 1 and 3 read for the hash only, and nothing twice
    assert update["content_id"] == hashlib.sha256(blob).hexdigest()
    assert update["idempotency_key"] == "push-7"
    assert UploadSession.objects.count() == 1


def test_push_file_streams_a_safetensors_file_from_disk(
    server, experiment, enrollment_token, small_parts, received_parts, tmp_path
):
    path = tmp_path / "update.safetensors"
    write_file(trained(0.5), path)
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        update = client.push_file(path, num_examples=3)
        assert update["content_id"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert len(received_parts) == -(-path.stat().st_size // PART)
        again = client.push_file(path, num_examples=3)  # the same bytes from the same base: one update
    assert again["id"] == update["id"]
    assert ModelUpdate.objects.count() == 1


def test_push_file_reads_its_file_once_and_declares_its_sha256_when_completing(
    server, experiment, enrollment_token, small_parts, received_parts, bytes_read, requests_seen, tmp_path
):
    path = tmp_path / "update.safetensors"
    write_file(trained(0.75), path)
    with Client.enroll(
        server, experiment.pk, enrollment_token=enrollment_token, quiet=True, threads=2
    ) as client:
        update = client.push_file(path, num_examples=2)
    size = path.stat().st_size
    assert bytes_read[0] == size
    assert len(received_parts) == -(-size // PART) > 2
    assert update["content_id"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [method for method, p in requests_seen if p.endswith("/complete/")] == ["POST"]
    assert UploadSession.objects.get().sha256 == update["content_id"]


def test_a_key_reused_for_other_bytes_is_refused_and_the_same_bytes_find_the_first_update(
    server, experiment, enrollment_token, small_parts, tmp_path
):
    first, other = tmp_path / "first.safetensors", tmp_path / "other.safetensors"
    write_file(trained(0.25), first)
    write_file(trained(0.5), other)
    assert first.stat().st_size == other.stat().st_size
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        update = client.push_file(first, num_examples=1, idempotency_key="twin")
        with pytest.raises(ConflictError) as refused:
            client.push_file(other, num_examples=1, idempotency_key="twin")
        again = client.push_file(first, num_examples=1, idempotency_key="twin")
    assert "other bytes" in refused.value.detail
    assert again["id"] == update["id"]
    assert (ModelUpdate.objects.count(), UploadSession.objects.count()) == (1, 1)


def test_a_file_that_does_not_fit_the_experiment_is_refused_and_nothing_kept(
    server, experiment, enrollment_token, small_parts, tmp_path
):
    path = tmp_path / "wrong.safetensors"
    write_file({"dense": np.zeros((3, 4), np.float32), "bias": np.zeros(3, np.float32)}, path)
    with (
        Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client,
        pytest.raises(ValidationError) as refused,
    ):
        client.push_file(path, num_examples=1)
    assert refused.value.code == "invalid_weights"
    assert "shape" in refused.value.detail
    assert (ModelUpdate.objects.count(), UploadSession.objects.get().state) == (0, "rejected")
