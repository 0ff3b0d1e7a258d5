"""Authorization matrix: for every endpoint, callers without a right to the experiment are refused
(401, 403 or 404) and change nothing; the legitimate caller succeeds, so the matrix can fail."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from fma_core.rounds import RoundEngine
from fma_core.weights import to_bytes
from fma_django import services
from fma_django.models import (
    Client,
    ClientAggregateScore,
    Enrollment,
    EnrollmentToken,
    Experiment,
    ModelAggregate,
    ModelArtifact,
    ModelUpdate,
    UploadSession,
)
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

REFUSED = {401, 403, 404}


@dataclass
class World:
    experiment: Experiment
    update: ModelUpdate
    aggregate: ModelAggregate
    artifact: ModelArtifact
    score: ClientAggregateScore
    upload: UploadSession
    callers: dict[str, APIClient]
    member_uuid: str


@pytest.fixture
def world(make_experiment, enroll, uploader, api_for, other_developer, safetensors) -> World:
    experiment = make_experiment()
    member = enroll(experiment)
    assert uploader(member, experiment.pk, safetensors(1.0)).status_code == 201
    RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    aggregate = experiment.aggregates.get()
    score = member.post(
        "/api/v1/client_aggregate_scores/",
        {"aggregate": aggregate.pk, "validation_results": {}},
        format="json",
    )
    assert score.status_code == 201

    data = body()
    started = member.post(
        f"/api/v1/models/{experiment.pk}/uploads/",
        {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        format="json",
    )
    assert started.status_code == 201, started.content
    part = member.generic(
        "PUT", started.json()["targets"][0]["url"], data, content_type="application/octet-stream"
    )
    assert part.status_code == 200, part.content

    elsewhere = make_experiment(owner=other_developer, name="elsewhere")
    revoked = enroll(experiment)
    services.client_revoke(client=Client.objects.get(uuid=revoked.uuid))
    return World(
        experiment=experiment,
        update=ModelUpdate.objects.get(experiment=experiment),
        aggregate=aggregate,
        artifact=experiment.artifacts.get(),
        score=ClientAggregateScore.objects.get(pk=score.json()["id"]),
        upload=UploadSession.objects.get(),
        callers={
            "owner": api_for(experiment.developer),
            "member": member,
            "other_developer": api_for(other_developer),
            "client_not_enrolled": enroll(elsewhere),
            "revoked_client": revoked,
            "anonymous": APIClient(),
        },
        member_uuid=member.uuid,
    )


def body(value: float = 3.0) -> bytes:
    import numpy as np

    return to_bytes({"dense": np.full((4, 3), value, np.float32), "bias": np.zeros(3, np.float32)})


# (name, method, path template, JSON body or bytes, who may, expected status for them)
ENDPOINTS = [
    ("model detail", "get", "/api/v1/models/{e}/", None, "owner", 200),
    ("model patch", "patch", "/api/v1/models/{e}/", {"name": "hijacked", "legacy_mode": True}, "owner", 200),
    ("model put", "put", "/api/v1/models/{e}/", {"name": "hijacked", "open_enrollment": True}, "owner", 200),
    ("model delete", "delete", "/api/v1/models/{e}/", None, "owner", 204),
    ("enrollment token", "post", "/api/v1/models/{e}/enrollment_tokens/", {}, "owner", 201),
    ("revoke client", "post", "/api/v1/models/{e}/revoke_client/", {"client": "{member}"}, "owner", 204),
    ("register client", "post", "/api/v1/models/{e}/register_client/", {}, None, None),
    ("latest aggregate", "get", "/api/v1/models/{e}/get_latest_aggregate/", None, "member", 200),
    ("latest model", "get", "/api/v1/models/{e}/get_latest_model/", None, "member", 200),
    ("current artifact", "get", "/api/v1/models/{e}/get_current_artifact/", None, "member", 200),
    ("latest weights", "get", "/api/v1/models/{e}/latest_weights/", None, "member", 200),
    ("upload update", "post", "/api/v1/models/{e}/upload_update/", b"", "member", 201),
    (
        "json update",
        "post",
        "/api/v1/model_updates/",
        {"federated_model": "{e}", "data": "{json}"},
        "member",
        201,
    ),
    ("upload start", "post", "/api/v1/models/{e}/uploads/", {"size": 100, "sha256": "a" * 64}, "member", 201),
    ("upload status", "get", "/api/v1/models/{e}/uploads/{up}/", None, "member", 200),
    ("upload part", "put", "/api/v1/models/{e}/uploads/{up}/parts/1/", b"", "member", 200),
    ("upload complete", "post", "/api/v1/models/{e}/uploads/{up}/complete/", None, "member", 201),
    ("upload abort", "delete", "/api/v1/models/{e}/uploads/{up}/", None, "member", 200),
    ("update detail", "get", "/api/v1/model_updates/{u}/", None, "member", 200),
    ("update weights", "get", "/api/v1/model_updates/{u}/weights/", None, "owner", 200),
    ("aggregate detail", "get", "/api/v1/model_aggregates/{a}/", None, "member", 200),
    ("aggregate patch", "patch", "/api/v1/model_aggregates/{a}/", {"validation_score": 0.1}, "owner", 200),
    ("aggregate weights", "get", "/api/v1/model_aggregates/{a}/weights/", None, "member", 200),
    ("publish", "post", "/api/v1/model_aggregates/{a}/publish_aggregate/", {"version": "9"}, "owner", 201),
    ("artifact detail", "get", "/api/v1/model_artifacts/{r}/", None, "member", 200),
    ("artifact weights", "get", "/api/v1/model_artifacts/{r}/weights/", None, "owner", 200),
    ("score detail", "get", "/api/v1/client_aggregate_scores/{s}/", None, "owner", 200),
    (
        "score create",
        "post",
        "/api/v1/client_aggregate_scores/",
        {"aggregate": "{a}", "validation_results": {}},
        None,
        None,
    ),
]
LISTS = [
    ("/api/v1/models/", "experiment"),
    ("/api/v1/model_updates/", "update"),
    ("/api/v1/model_aggregates/", "aggregate"),
    ("/api/v1/model_artifacts/", "artifact"),
    ("/api/v1/client_aggregate_scores/", "score"),
]
INTRUDERS = ["other_developer", "client_not_enrolled", "revoked_client", "anonymous"]


def fill(value, world: World):
    ids = {
        "{e}": world.experiment.pk,
        "{u}": world.update.pk,
        "{a}": world.aggregate.pk,
        "{r}": world.artifact.pk,
        "{s}": world.score.pk,
        "{up}": world.upload.uuid,
        "{member}": world.member_uuid,
        "{json}": [[[2.0] * 3] * 4, [0.0] * 3],
    }
    if isinstance(value, str):
        if value in ids:
            return ids[value]
        for key, replacement in ids.items():
            value = value.replace(key, str(replacement))
        return value
    if isinstance(value, dict):
        return {k: fill(v, world) for k, v in value.items()}
    return value


def call(api: APIClient, method: str, path: str, payload, world: World):
    path = fill(path, world)
    if isinstance(payload, bytes):
        return api.generic(method.upper(), path, body(), content_type="application/octet-stream")
    if payload is None:
        return getattr(api, method)(path)
    return getattr(api, method)(path, fill(payload, world), format="json")


def snapshot(world: World) -> dict:
    return {
        "experiments": list(Experiment.objects.order_by("pk").values()),
        "clients": list(
            Client.objects.order_by("pk").values("uuid", "secret_hash", "revoked_at")
        ),  # not last_seen
        "enrollments": list(Enrollment.objects.order_by("pk").values()),
        "tokens": EnrollmentToken.objects.count(),
        "updates": list(ModelUpdate.objects.order_by("pk").values()),
        "aggregates": list(ModelAggregate.objects.order_by("pk").values()),
        "artifacts": list(ModelArtifact.objects.order_by("pk").values()),
        "scores": list(ClientAggregateScore.objects.order_by("pk").values()),
        "uploads": list(UploadSession.objects.order_by("pk").values()),
    }


@pytest.mark.parametrize(
    ("name", "method", "path", "payload", "who", "ok"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_intruders_are_refused_and_change_nothing(world, stored_files, name, method, path, payload, who, ok):
    for intruder in INTRUDERS:
        before, files = snapshot(world), stored_files()
        response = call(world.callers[intruder], method, path, payload, world)
        assert response.status_code in REFUSED, (name, intruder, response.status_code, response.content)
        assert snapshot(world) == before, (name, intruder)
        assert stored_files() == files, (name, intruder)


@pytest.mark.parametrize(
    ("name", "method", "path", "payload", "who", "ok"),
    [e for e in ENDPOINTS if e[4]],
    ids=[e[0] for e in ENDPOINTS if e[4]],
)
def test_the_legitimate_caller_succeeds(world, name, method, path, payload, who, ok):
    response = call(world.callers[who], method, path, payload, world)
    if response.streaming:  # read the weights: that also closes the stored file they stream from
        b"".join(response.streaming_content)
    assert response.status_code == ok, (name, response.content)


@pytest.mark.parametrize("intruder", INTRUDERS)
def test_lists_show_intruders_nothing_of_the_experiment(world, intruder):
    for path, what in LISTS:
        response = world.callers[intruder].get(path)
        if response.status_code in REFUSED:
            continue
        ids = {row["id"] for row in response.json()["results"]}
        assert getattr(world, what).pk not in ids, (path, intruder)


def test_lists_show_the_owner_everything(world):
    for path, what in LISTS:
        ids = {row["id"] for row in world.callers["owner"].get(path).json()["results"]}
        assert getattr(world, what).pk in ids, path


def test_staff_is_not_an_intruder(world, api_for):
    staff = api_for(User.objects.create_user("root", is_staff=True))
    assert staff.get(f"/api/v1/models/{world.experiment.pk}/").status_code == 200
