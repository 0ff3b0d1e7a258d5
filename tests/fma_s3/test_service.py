"""The service on S3, end to end over real HTTP: the live API with its weight store on SeaweedFS's S3
gateway (moto's server under ``-m moto_s3``), fma-client pushing through presigned multipart part URLs, rounds reading from S3 and
downloads redirected to presigned GETs. The API never sees an update's bytes."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import numpy as np
import pytest
import requests
from django.contrib.auth.models import User

from fma_client import Client, Retry, ServerUnavailable
from fma_client.weights import encode
from fma_core.rounds import RoundEngine
from fma_core.weights import open_weights, to_bytes
from fma_django import ingestion, services
from fma_django.models import EventKind, ModelAggregate, ModelUpdate, UploadSession, UploadState
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore
from fma_s3.store import MIN_PART_SIZE

from .conftest import REGION

PART = MIN_PART_SIZE  # S3's smallest part (but the last)
SMALL = {"w": np.arange(12, dtype=np.float32).reshape(4, 3), "b": np.ones(3, dtype=np.float32)}


@pytest.fixture
def service(live_server, transactional_db, settings, s3_endpoint: str, bucket: str) -> str:
    """The live service, its weights in this test's bucket under ``fma/``."""
    settings.FMA_WEIGHT_STORE = "fma_s3.S3WeightStore"
    settings.FMA_WEIGHT_STORE_OPTIONS = {
        "bucket": bucket,
        "prefix": "fma/",
        "region": REGION,
        "endpoint_url": s3_endpoint,
        "addressing_style": "path",
    }
    settings.FMA_UPLOAD_PART_BYTES = PART
    settings.FMA_AGGREGATOR_RUNNER = "none"  # rounds run in the test, where it can look at them
    return live_server.url


@pytest.fixture
def developer(service: str) -> User:
    return User.objects.create_user("dev", password="dev-password")


def new_experiment(developer: User, **config: Any):
    return services.experiment_create(developer=developer, name="on-s3", **config)


def enroll(service: str, experiment) -> Client:
    _, token = services.enrollment_token_issue(experiment=experiment, user=experiment.developer)
    return Client.enroll(service, experiment.pk, enrollment_token=token, quiet=True)


def run_round(experiment_id: int) -> int:
    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment_id))
    assert outcome.status == "committed", outcome
    return int(outcome.aggregate.aggregate_id)


def stored(s3, bucket: str) -> dict[str, int]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="fma/updates/").get("Contents", [])
    return {item["Key"]: item["Size"] for item in listed}


def pending_uploads(s3, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


class ApiParts:
    """Counts the requests that reach the API's own part endpoint (none should, on S3)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = ingestion.upload_part_put

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(ingestion, "upload_part_put", counted)


def test_a_1_gb_update_travels_in_presigned_parts_straight_to_s3(
    service, developer, s3, bucket, monkeypatch, settings
):
    settings.FMA_UPLOAD_PART_BYTES = 64 * 1024**2  # the default part size: 15 parts
    elements = 250_000_000  # 1 GB of float32
    experiment = new_experiment(
        developer,
        tensor_spec=[{"name": "w", "dtype": "F32", "shape": [elements]}],
        max_update_bytes=2 * 1024**3,
    )
    api_parts = ApiParts(monkeypatch)
    weights = {"w": np.random.default_rng(0).standard_normal(elements, dtype=np.float32)}
    with enroll(service, experiment) as client:
        update = client.push(weights, num_examples=10)
    (session,) = UploadSession.objects.all()
    assert session.state == UploadState.COMPLETED
    assert session.part_count == 15  # all sent straight to S3
    assert api_parts.calls == 0
    row = ModelUpdate.objects.get(pk=update["id"])
    assert row.size_bytes == session.size_bytes > 10**9
    assert row.content_id == session.sha256  # measured by the store from S3's bytes, as declared
    assert stored(s3, bucket) == {f"fma/{row.weights_key}": row.size_bytes}
    assert pending_uploads(s3, bucket) == []
    # test_rounds.py aggregates from S3; here the tensor's ends are read by range (on moto, which
    # reads a whole object for every ranged GET, a round over 1 GB would take minutes).
    with weight_store().open_weights(row.weights_key) as reader:
        np.testing.assert_array_equal(reader.read_block("w", 0, 1000), weights["w"][:1000])
        np.testing.assert_array_equal(reader.read_block("w", elements - 1000, elements), weights["w"][-1000:])


def test_downloads_redirect_to_a_presigned_get_that_needs_no_credential(service, developer, s3_endpoint):
    experiment = new_experiment(developer, initial_model=dict(SMALL))
    with enroll(service, experiment) as client:
        answer = requests.get(
            f"{service}/api/v1/models/{experiment.pk}/latest_weights/",
            headers={"Authorization": f"Client {client.token}"},
            allow_redirects=False,
            timeout=30,
        )
        assert answer.status_code == 302
        assert answer.headers["X-FMA-Aggregate"] == "initial"
        assert answer.headers["Location"].startswith(s3_endpoint)
        body = requests.get(answer.headers["Location"], timeout=30).content
        with open_weights(body) as reader:
            np.testing.assert_array_equal(reader.read("w"), SMALL["w"])
        model = client.pull()  # the client follows the redirect itself
        np.testing.assert_array_equal(model.weights["w"], SMALL["w"])


def start(client: Client, service: str, experiment_id: int, body: bytes, **fields: Any) -> requests.Response:
    return requests.post(
        f"{service}/api/v1/models/{experiment_id}/uploads/",
        json={"size": len(body), "sha256": hashlib.sha256(body).hexdigest(), **fields},
        headers={"Authorization": f"Client {client.token}"},
        timeout=30,
    )


def put_parts(session: dict[str, Any], body: bytes, numbers: list[int] | None = None) -> None:
    for target in session["targets"]:
        if numbers is None or target["number"] in numbers:
            part = body[target["offset"] : target["offset"] + target["size"]]
            answer = requests.put(target["url"], data=part, headers=target["headers"], timeout=30)
            assert answer.status_code == 200, answer.text


def complete(client: Client, service: str, experiment_id: int, session: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{service}/api/v1/models/{experiment_id}/uploads/{session['id']}/complete/",
        headers={"Authorization": f"Client {client.token}"},
        timeout=60,
    )


def test_a_broken_upload_resumes_with_only_the_missing_parts(service, developer, s3, bucket, monkeypatch):
    elements = 3 * PART // 4 - 100  # three parts, the last a little short
    experiment = new_experiment(developer, tensor_spec=[{"name": "w", "dtype": "F32", "shape": [elements]}])
    weights = {"w": np.random.default_rng(1).standard_normal(elements, dtype=np.float32)}
    body = to_bytes(weights)
    with enroll(service, experiment) as client:
        first = start(client, service, experiment.pk, body, num_examples=5, idempotency_key="resume-me")
        assert first.status_code == 201, first.text
        session = first.json()
        assert len(session["targets"]) == 3
        put_parts(session, body, numbers=[1, 3])  # the connection broke before part 2

        sent: list[str] = []
        original = requests.Session.request

        def spy(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if method == "PUT":
                sent.append(url)
            return original(self, method, url, *args, **kwargs)

        monkeypatch.setattr(requests.Session, "request", spy)
        update = client.push(weights, num_examples=5, idempotency_key="resume-me")
    assert len(sent) == 1
    assert "partNumber=2" in sent[0]
    row = ModelUpdate.objects.get(pk=update["id"])
    assert row.content_id == hashlib.sha256(body).hexdigest()
    assert pending_uploads(s3, bucket) == []


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        ("corrupted_part", "hash_mismatch"),
        ("wrong_hash", "hash_mismatch"),
        ("lying_header", "invalid_weights"),
        ("wrong_spec", "invalid_weights"),
    ],
)
def test_a_refused_upload_leaves_nothing_in_s3(service, developer, s3, bucket, tamper, code):
    experiment = new_experiment(developer, initial_model=dict(SMALL))
    body = to_bytes(SMALL)
    declared = body
    if tamper == "corrupted_part":
        body = body[:-10] + b"\x00" * 10
    elif tamper == "wrong_hash":
        declared = body[:-1] + b"\x01"
    elif tamper == "lying_header":
        header_length = int.from_bytes(body[:8], "little")
        header = json.loads(body[8 : 8 + header_length])
        header["w"]["data_offsets"][1] += 4  # claims more bytes than it has
        header["b"]["data_offsets"][0] += 4
        text = json.dumps(header).encode().ljust(header_length)
        body = declared = body[:8] + text[:header_length] + body[8 + header_length :]
    elif tamper == "wrong_spec":
        body = declared = to_bytes({"w": SMALL["w"][:, :-1], "b": SMALL["b"]})
    with enroll(service, experiment) as client:
        answer = start(client, service, experiment.pk, declared, num_examples=1)
        assert answer.status_code == 201, answer.text
        session = answer.json()
        put_parts(session, body)
        refused = complete(client, service, experiment.pk, session)
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == code
    assert stored(s3, bucket) == {}
    assert pending_uploads(s3, bucket) == []
    assert ModelUpdate.objects.count() == 0
    assert UploadSession.objects.get().state == UploadState.REJECTED
    assert experiment.events.filter(kind=EventKind.UPDATE_REJECTED).exists()


def test_an_oversized_update_is_refused_before_any_byte_is_sent(service, developer, s3, bucket):
    experiment = new_experiment(developer, initial_model=dict(SMALL), max_update_bytes=64)
    with enroll(service, experiment) as client:
        answer = start(client, service, experiment.pk, to_bytes(SMALL), num_examples=1)
    assert answer.status_code == 413
    assert answer.json()["code"] == "too_large"
    assert pending_uploads(s3, bucket) == []
    assert UploadSession.objects.count() == 0


def test_parts_larger_than_their_target_are_refused_at_completion(service, developer, s3, bucket):
    """A presigned PUT cannot cap a part's size, so completion checks every part S3 holds."""
    experiment = new_experiment(developer, initial_model=dict(SMALL))
    body = to_bytes(SMALL)
    with enroll(service, experiment) as client:
        session = start(client, service, experiment.pk, body, num_examples=1).json()
        (target,) = session["targets"]
        requests.put(target["url"], data=body + b"\x00" * 4096, headers=target["headers"], timeout=30)
        refused = complete(client, service, experiment.pk, session)
    assert refused.status_code == 400, refused.text
    assert stored(s3, bucket) == {}
    assert ModelUpdate.objects.count() == 0


def test_concurrent_pushes_from_many_clients_land_once_each_and_aggregate_from_s3(
    service, developer, s3, bucket
):
    experiment = new_experiment(developer, initial_model=dict(SMALL))
    clients = [enroll(service, experiment) for _ in range(4)]
    results: list[dict[str, Any]] = []

    def push(client: Client, seed: int) -> None:
        weights = {name: value + seed for name, value in SMALL.items()}
        results.append(client.push(weights, num_examples=seed + 1))

    threads = [threading.Thread(target=push, args=(c, i)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert len({r["id"] for r in results}) == 4
    assert len(stored(s3, bucket)) == 4
    aggregate = ModelAggregate.objects.get(pk=run_round(experiment.pk))
    with weight_store().open_weights(aggregate.weights_key) as reader:
        # fedavg weighted by num_examples 1..4 of SMALL + 0..3: SMALL + (0*1 + 1*2 + 2*3 + 3*4) / 10
        for name, value in SMALL.items():
            np.testing.assert_allclose(reader.read(name), value + 2.0, rtol=1e-6)


def test_a_push_whose_complete_died_after_s3_joined_the_parts_is_finished_with_its_key(
    service, developer, s3, bucket, monkeypatch
):
    experiment = new_experiment(developer, initial_model=SMALL)
    weights = {name: array + 1 for name, array in SMALL.items()}
    body = encode(weights)  # the bytes the client sends
    accept = ingestion.update_accept

    def died(**kwargs: Any) -> Any:  # S3 joined the parts; the process died before the update was recorded
        raise RuntimeError("the server died")

    _, token = services.enrollment_token_issue(experiment=experiment, user=experiment.developer)
    retry = Retry(attempts=2, backoff=0)
    with Client.enroll(service, experiment.pk, enrollment_token=token, quiet=True, retry=retry) as client:
        monkeypatch.setattr(ingestion, "update_accept", died)
        with pytest.raises(ServerUnavailable) as failed:
            client.push(weights, num_examples=2)
        assert pending_uploads(s3, bucket) == []  # joined: S3's multipart upload is over
        monkeypatch.setattr(ingestion, "update_accept", accept)
        update = client.push(weights, num_examples=2, idempotency_key=failed.value.idempotency_key)
    row = ModelUpdate.objects.get()
    assert row.pk == update["id"]
    assert row.content_id == hashlib.sha256(body).hexdigest()
    assert s3.get_object(Bucket=bucket, Key=f"fma/{row.weights_key}")["Body"].read() == body
