"""Authorization matrix, generated from the OpenAPI schema: every operation the schema lists ×
{anonymous, another developer, a client of another experiment, a revoked client, a client calling
a developer-only operation (and a developer calling a client-only one)} is refused with 401, 403
or 404, answers in the documented shape, and changes nothing; lists show intruders none of the
experiment's rows. The legitimate caller succeeds, so the matrix can fail.

A new operation in the schema fails ``test_every_operation_is_classified`` until it has a rule
in ``RULES``: who may call it and a request that succeeds for them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from fma_core.rounds import RoundEngine
from fma_core.weights import to_bytes
from fma_django import services
from fma_django.models import (
    Client,
    DeveloperToken,
    Enrollment,
    EnrollmentToken,
    Evaluation,
    Experiment,
    ModelAggregate,
    ModelArtifact,
    ModelUpdate,
    UploadSession,
)
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

from .openapi_support import nonconformity

REFUSED = {401, 403, 404}


@dataclass
class World:
    experiment: Experiment
    update: ModelUpdate
    aggregate: ModelAggregate
    artifact: ModelArtifact
    score: Evaluation
    upload: UploadSession
    callers: dict[str, APIClient]
    member_uuid: str
    owner_token: DeveloperToken


@pytest.fixture
def world(make_experiment, enroll, uploader, api_for, other_developer, safetensors) -> World:
    experiment = make_experiment(evaluation={"metrics": {"accuracy": {"goal": "max"}}})
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
        score=Evaluation.objects.get(pk=score.json()["id"]),
        upload=UploadSession.objects.get(),
        callers={
            "owner": api_for(experiment.developer),
            "member": member,
            "other_developer": api_for(other_developer),
            "client_not_enrolled": enroll(elsewhere),
            "revoked_client": revoked,
            "anonymous": APIClient(),
            "member_as_developer": member,
        },
        member_uuid=member.uuid,
        owner_token=DeveloperToken.objects.get(user=experiment.developer),
    )


def body(value: float = 3.0) -> bytes:
    import numpy as np

    return to_bytes({"dense": np.full((4, 3), value, np.float32), "bias": np.zeros(3, np.float32)})


OWNER, MEMBER, CLIENT, DEVELOPER, ANY_CLIENT, PUBLIC, LOGIN, LIST = (
    "owner",  # the experiment's developer only
    "member",  # the experiment's developer or a client enrolled in it
    "client",  # a client enrolled in the experiment only
    "developer",  # any developer: it names none of another's rows (creates its own)
    "any_client",  # any client, acting on itself
    "public",  # anyone
    "login",  # anyone: a username and password are its credentials
    "list",  # anyone signed in, who sees only their own rows
)
INTRUDERS = {
    OWNER: ["anonymous", "other_developer", "client_not_enrolled", "revoked_client", "member_as_developer"],
    MEMBER: ["anonymous", "other_developer", "client_not_enrolled", "revoked_client"],
    CLIENT: ["anonymous", "other_developer", "client_not_enrolled", "revoked_client", "owner"],
    DEVELOPER: ["anonymous", "client_not_enrolled", "revoked_client", "member_as_developer"],
    ANY_CLIENT: ["anonymous", "other_developer", "revoked_client", "owner"],
    PUBLIC: ["revoked_client"],
    LOGIN: [],
    LIST: ["anonymous", "other_developer", "client_not_enrolled", "revoked_client"],
}


@dataclass(frozen=True)
class Rule:
    kind: str
    payload: object = None  # a JSON body, or bytes for a safetensors body
    legitimate: str | None = None  # who succeeds with it, and with which status
    ok: int | None = None


# (method, path of the schema) -> who may call it; every operation of the schema must have one.
RULES = {
    ("post", "/api-token-auth/"): Rule(
        LOGIN, {"username": "dev", "password": "dev-password"}, "anonymous", 200
    ),
    ("get", "/api/v1/tokens/"): Rule(LIST),
    ("post", "/api/v1/tokens/"): Rule(DEVELOPER, {}, "other_developer", 201),
    ("delete", "/api/v1/tokens/{id}/"): Rule(OWNER, None, "owner", 204),
    ("get", "/api/v1/models/"): Rule(LIST),
    ("post", "/api/v1/models/"): Rule(DEVELOPER, {"name": "mine"}, "other_developer", 201),
    ("get", "/api/v1/models/{id}/"): Rule(OWNER, None, "owner", 200),
    ("put", "/api/v1/models/{id}/"): Rule(OWNER, {"name": "hijacked", "open_enrollment": True}, "owner", 200),
    ("patch", "/api/v1/models/{id}/"): Rule(OWNER, {"name": "hijacked", "legacy_mode": True}, "owner", 200),
    ("delete", "/api/v1/models/{id}/"): Rule(OWNER, None, "owner", 204),
    ("get", "/api/v1/models/{id}/enrollment_tokens/"): Rule(OWNER, None, "owner", 200),
    ("post", "/api/v1/models/{id}/enrollment_tokens/"): Rule(OWNER, {}, "owner", 201),
    ("delete", "/api/v1/models/{id}/enrollment_tokens/{token_id}/"): Rule(OWNER, None, "owner", 200),
    ("post", "/api/v1/models/{id}/revoke_client/"): Rule(OWNER, {"client": "{member}"}, "owner", 204),
    ("get", "/api/v1/models/{id}/metrics/"): Rule(OWNER, None, "owner", 200),
    ("post", "/api/v1/models/{id}/state/"): Rule(OWNER, {"state": "stopped"}, "owner", 200),
    ("post", "/api/v1/models/{id}/register_client/"): Rule(PUBLIC),
    ("get", "/api/v1/models/{id}/get_latest_aggregate/"): Rule(MEMBER, None, "member", 200),
    ("get", "/api/v1/models/{id}/get_latest_model/"): Rule(MEMBER, None, "member", 200),
    ("get", "/api/v1/models/{id}/get_current_artifact/"): Rule(MEMBER, None, "member", 200),
    ("get", "/api/v1/models/{id}/latest_weights/"): Rule(MEMBER, None, "member", 200),
    ("post", "/api/v1/models/{id}/upload_update/"): Rule(CLIENT, b"", "member", 201),
    ("get", "/api/v1/models/{id}/participation/"): Rule(CLIENT, None, "member", 200),
    ("post", "/api/v1/models/{experiment_pk}/uploads/"): Rule(
        CLIENT, {"size": 100, "sha256": "a" * 64}, "member", 201
    ),
    ("get", "/api/v1/models/{experiment_pk}/uploads/{upload_id}/"): Rule(CLIENT, None, "member", 200),
    ("get", "/api/v1/models/{experiment_pk}/evaluations/"): Rule(MEMBER, None, "member", 200),
    ("post", "/api/v1/models/{experiment_pk}/evaluations/"): Rule(
        MEMBER, {"aggregate": "{a}", "metrics": {"accuracy": 0.5}, "num_examples": 3}, "owner", 201
    ),
    ("delete", "/api/v1/models/{experiment_pk}/uploads/{upload_id}/"): Rule(CLIENT, None, "member", 200),
    ("put", "/api/v1/models/{experiment_pk}/uploads/{upload_id}/parts/{number}/"): Rule(
        CLIENT, b"", "member", 200
    ),
    ("post", "/api/v1/models/{experiment_pk}/uploads/{upload_id}/complete/"): Rule(
        CLIENT, None, "member", 201
    ),
    # secure rounds: only for an experiment with secure_aggregation (tests/fma_client/test_secure_aggregation.py)
    ("get", "/api/v1/models/{experiment_pk}/secure_round/"): Rule(CLIENT),
    ("post", "/api/v1/models/{experiment_pk}/secure_round/{round_id}/{stage}/"): Rule(CLIENT, {}),
    ("put", "/api/v1/models/{experiment_pk}/secure_round/{round_id}/masked_input/"): Rule(CLIENT, b""),
    ("get", "/api/v1/model_updates/"): Rule(LIST),
    ("post", "/api/v1/model_updates/"): Rule(
        CLIENT, {"federated_model": "{e}", "data": "{json}"}, "member", 201
    ),
    ("get", "/api/v1/model_updates/{id}/"): Rule(MEMBER, None, "member", 200),
    ("get", "/api/v1/model_updates/{id}/weights/"): Rule(MEMBER, None, "owner", 200),
    ("get", "/api/v1/model_aggregates/"): Rule(LIST),
    ("get", "/api/v1/model_aggregates/{id}/"): Rule(MEMBER, None, "member", 200),
    ("patch", "/api/v1/model_aggregates/{id}/"): Rule(OWNER, {"validation_score": 0.1}, "owner", 200),
    ("get", "/api/v1/model_aggregates/{id}/weights/"): Rule(MEMBER, None, "member", 200),
    ("post", "/api/v1/model_aggregates/{id}/publish_aggregate/"): Rule(OWNER, {"version": "9"}, "owner", 201),
    ("get", "/api/v1/model_artifacts/"): Rule(LIST),
    ("get", "/api/v1/model_artifacts/{id}/"): Rule(MEMBER, None, "member", 200),
    ("get", "/api/v1/model_artifacts/{id}/weights/"): Rule(MEMBER, None, "owner", 200),
    ("get", "/api/v1/client_aggregate_scores/"): Rule(LIST),
    ("post", "/api/v1/client_aggregate_scores/"): Rule(
        CLIENT, {"aggregate": "{a}", "validation_results": {}}, "member", 200
    ),
    ("get", "/api/v1/client_aggregate_scores/{id}/"): Rule(MEMBER, None, "owner", 200),
    ("post", "/api/v1/clients/rotate_credential/"): Rule(ANY_CLIENT, None, "member", 200),
}
SCHEMA = SchemaGenerator().get_schema(request=None, public=True)
OPERATIONS = [(method, path) for path, item in SCHEMA["paths"].items() for method in item]
LIST_ROWS = {
    "/api/v1/models/": "experiment",
    "/api/v1/model_updates/": "update",
    "/api/v1/model_aggregates/": "aggregate",
    "/api/v1/model_artifacts/": "artifact",
    "/api/v1/client_aggregate_scores/": "score",
    "/api/v1/tokens/": "owner_token",
}
ROW_OF_PATH = {prefix + "{id}/": what for prefix, what in LIST_ROWS.items()}


def rule(method: str, path: str) -> Rule:
    found = RULES.get((method, path))
    assert found is not None, f"{method.upper()} {path} is in the schema but not classified: add it to RULES"
    return found


def test_every_operation_is_classified():
    assert sorted(set(OPERATIONS) - set(RULES)) == []
    assert sorted(set(RULES) - set(OPERATIONS)) == []  # no stale rule either


def fill(value, world: World, path: str = ""):
    ids = {
        "{e}": world.experiment.pk,
        "{experiment_pk}": world.experiment.pk,
        "{u}": world.update.pk,
        "{a}": world.aggregate.pk,
        "{upload_id}": world.upload.uuid,
        "{token_id}": world.experiment.enrollment_tokens.order_by("pk").first().pk,
        "{number}": 1,
        "{round_id}": 1,
        "{stage}": "advertise",
        "{member}": world.member_uuid,
        "{json}": [[[2.0] * 3] * 4, [0.0] * 3],
    }
    for prefix, what in ROW_OF_PATH.items():
        if path.startswith(prefix):
            ids["{id}"] = getattr(world, what).pk
    if isinstance(value, str):
        if value in ids:
            return ids[value]
        for key, replacement in ids.items():
            value = value.replace(key, str(replacement))
        return value
    if isinstance(value, dict):
        return {k: fill(v, world, path) for k, v in value.items()}
    return value


def call(api: APIClient, method: str, path: str, payload, world: World):
    url = fill(path, world, path)
    if isinstance(payload, bytes):
        return api.generic(method.upper(), url, body(), content_type="application/octet-stream")
    if payload is None:
        return getattr(api, method)(url)
    return getattr(api, method)(url, fill(payload, world, path), format="json")


def snapshot(world: World) -> dict:
    return {
        "experiments": list(Experiment.objects.order_by("pk").values()),
        "clients": list(
            Client.objects.order_by("pk").values("uuid", "secret_hash", "revoked_at")
        ),  # not last_seen
        "enrollments": list(Enrollment.objects.order_by("pk").values()),
        "tokens": list(EnrollmentToken.objects.order_by("pk").values()),
        "updates": list(ModelUpdate.objects.order_by("pk").values()),
        "aggregates": list(ModelAggregate.objects.order_by("pk").values()),
        "artifacts": list(ModelArtifact.objects.order_by("pk").values()),
        "evaluations": list(Evaluation.objects.order_by("pk").values()),
        "uploads": list(UploadSession.objects.order_by("pk").values()),
    }


def leaked(world: World, response) -> list[str]:
    """The world's secrets or ids of its rows that a refused or listed answer shows."""
    text = response.content.decode(errors="replace")
    return [name for name, value in [("member uuid", world.member_uuid)] if value in text]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m.upper()} {p}" for m, p in OPERATIONS])
def test_intruders_are_refused_as_documented_and_change_nothing(world, stored_files, method, path):
    found = rule(method, path)
    for intruder in INTRUDERS[found.kind]:
        before, files = snapshot(world), stored_files()
        response = call(world.callers[intruder], method, path, found.payload, world)
        if found.kind == LIST and response.status_code == 200:
            rows = {row["id"] for row in response.json()["results"]}
            assert getattr(world, LIST_ROWS[path]).pk not in rows, (path, intruder)
            continue
        if found.kind == PUBLIC and intruder != "revoked_client":
            continue
        assert response.status_code in REFUSED, (
            method,
            path,
            intruder,
            response.status_code,
            response.content,
        )
        assert nonconformity(SCHEMA, method, path, response) is None
        assert leaked(world, response) == [], (method, path, intruder)
        assert snapshot(world) == before, (method, path, intruder)
        assert stored_files() == files, (method, path, intruder)


@pytest.mark.parametrize(
    ("method", "path"),
    [operation for operation in OPERATIONS if RULES.get(operation, Rule(PUBLIC)).legitimate],
    ids=[f"{m.upper()} {p}" for m, p in OPERATIONS if RULES.get((m, p), Rule(PUBLIC)).legitimate],
)
def test_the_legitimate_caller_succeeds(world, method, path):
    found = rule(method, path)
    response = call(world.callers[found.legitimate], method, path, found.payload, world)
    if response.streaming:  # read the weights: that also closes the stored file they stream from
        b"".join(response.streaming_content)
    assert response.status_code == found.ok, (method, path, response.content)


def test_lists_show_the_owner_everything(world):
    for path, what in LIST_ROWS.items():
        ids = {row["id"] for row in world.callers["owner"].get(path).json()["results"]}
        assert getattr(world, what).pk in ids, path


def test_staff_is_not_an_intruder(world, api_for):
    staff = api_for(User.objects.create_user("root", is_staff=True))
    assert staff.get(f"/api/v1/models/{world.experiment.pk}/").status_code == 200
