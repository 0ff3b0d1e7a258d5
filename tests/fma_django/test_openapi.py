"""The OpenAPI schema (``/api/schema/``) describes what the server sends, errors included (issue 13 item 14)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from fma_core.rounds import RoundEngine
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

from .openapi_support import load_schema, nonconformity

MODEL = "/api/v1/models/{id}/"
WEIGHTS = "/api/v1/models/{id}/latest_weights/"
ERROR_STATUSES = {"400", "401", "403", "404", "409", "410", "411", "413", "415", "429"}


@pytest.fixture
def schema(dev_api) -> dict:
    return load_schema(dev_api)


def test_an_experiment_without_artifact_and_aggregate_conforms(schema, make_experiment, dev_api, enroll):
    bare = make_experiment(initial_model=None, name="bare")
    member = enroll(bare)
    answers = [
        ("GET", MODEL, dev_api.get(f"/api/v1/models/{bare.pk}/")),
        ("GET", "/api/v1/models/", dev_api.get("/api/v1/models/")),
        (
            "GET",
            MODEL + "get_current_artifact/",
            member.get(f"/api/v1/models/{bare.pk}/get_current_artifact/"),
        ),
        (
            "GET",
            MODEL + "get_latest_aggregate/",
            member.get(f"/api/v1/models/{bare.pk}/get_latest_aggregate/"),
        ),
        ("GET", MODEL + "get_latest_model/", member.get(f"/api/v1/models/{bare.pk}/get_latest_model/")),
    ]
    assert answers[0][2].json()["current_artifact"] is None
    assert answers[2][2].json() == {}  # as the original answers: an empty object, not an error
    assert answers[3][2].json() == {}
    assert [nonconformity(schema, *answer) for answer in answers] == [None] * len(answers)


def test_an_experiment_with_artifact_and_aggregate_conforms(
    schema, experiment, client_api, uploader, safetensors
):
    assert uploader(client_api, experiment.pk, safetensors(2.0)).status_code == 201
    RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    pk = experiment.pk
    answers = [
        (
            "GET",
            MODEL + "get_current_artifact/",
            client_api.get(f"/api/v1/models/{pk}/get_current_artifact/"),
        ),
        (
            "GET",
            MODEL + "get_latest_aggregate/",
            client_api.get(f"/api/v1/models/{pk}/get_latest_aggregate/"),
        ),
        ("GET", MODEL + "get_latest_model/", client_api.get(f"/api/v1/models/{pk}/get_latest_model/")),
        ("GET", WEIGHTS, client_api.get(f"/api/v1/models/{pk}/latest_weights/")),
    ]
    etag = answers[3][2]["ETag"]
    answers += [
        ("GET", WEIGHTS, client_api.get(f"/api/v1/models/{pk}/latest_weights/", HTTP_RANGE="bytes=0-9")),
        ("GET", WEIGHTS, client_api.get(f"/api/v1/models/{pk}/latest_weights/", HTTP_IF_NONE_MATCH=etag)),
        ("GET", WEIGHTS, client_api.get(f"/api/v1/models/{pk}/latest_weights/", HTTP_RANGE="bytes=999999-")),
    ]
    assert [a[2].status_code for a in answers] == [200, 200, 200, 200, 206, 304, 416]
    assert [nonconformity(schema, *answer) for answer in answers] == [None] * len(answers)


def test_aggregates_with_and_without_server_state_conform(
    schema, experiment, client_api, dev_api, uploader, safetensors
):
    engine = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1)
    for value in (1.0, 2.0):
        assert uploader(client_api, experiment.pk, safetensors(value)).status_code == 201
        assert engine.run_round(str(experiment.pk)).status == "committed"
    stateful = experiment.aggregates.get(round_number=2)
    experiment.aggregates.filter(pk=stateful.pk).update(
        state_key="aggregates/s.safetensors", state_content_id="a" * 64
    )
    detail = "/api/v1/model_aggregates/{id}/"
    answers = [
        ("GET", "/api/v1/model_aggregates/", dev_api.get("/api/v1/model_aggregates/")),
        *(
            ("GET", detail, dev_api.get(f"/api/v1/model_aggregates/{a.pk}/"))
            for a in experiment.aggregates.all()
        ),
        (
            "GET",
            MODEL + "get_latest_aggregate/",
            client_api.get(f"/api/v1/models/{experiment.pk}/get_latest_aggregate/"),
        ),
    ]
    assert [a[2].status_code for a in answers] == [200] * 4
    assert [row["state_content_id"] for row in answers[0][2].json()["results"]] == ["a" * 64, None]
    assert [nonconformity(schema, *answer) for answer in answers] == [None] * len(answers)
    fields = schema["components"]["schemas"]["ModelAggregate"]["properties"]
    assert fields["state_content_id"]["readOnly"] is True


def test_every_operation_documents_its_refusals_with_the_error_component(schema):
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"detail", "code"}
    missing = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            documented = set(operation["responses"])
            expected = {"403"} | ({"401"} if operation.get("security", [{}]) != [{}] else set())
            expected |= {"404"} if "{" in path else set()
            if method in {"post", "put", "patch"}:
                expected |= {"400"}
            if not expected <= documented:
                missing.append((method, path, sorted(expected - documented)))
            for status in documented & ERROR_STATUSES:
                content = operation["responses"][status].get("content", {})
                if content.get("application/json", {}).get("schema") != {
                    "$ref": "#/components/schemas/Error"
                }:
                    missing.append((method, path, status, "not the Error component"))
    assert missing == []


def test_refusals_conform_to_the_schema(schema, experiment, dev_api, client_api, other_dev_api):
    pk = experiment.pk
    answers = [
        ("GET", "/api/v1/models/", APIClient().get("/api/v1/models/")),
        ("GET", "/api/v1/models/", APIClient(HTTP_AUTHORIZATION="Token nope").get("/api/v1/models/")),
        ("GET", "/api/v1/models/", client_api.get("/api/v1/models/")),
        ("GET", MODEL, other_dev_api.get(f"/api/v1/models/{pk}/")),
        (
            "POST",
            "/api/v1/models/",
            dev_api.post("/api/v1/models/", {"name": "m", "aggregator": "nope"}, format="json"),
        ),
        ("POST", "/api/v1/models/", dev_api.post("/api/v1/models/", b"{", content_type="application/json")),
        ("POST", "/api/v1/models/", dev_api.post("/api/v1/models/", b"x", content_type="text/plain")),
        ("GET", "/api/v1/model_updates/", dev_api.get("/api/v1/model_updates/?page=99")),
        ("GET", WEIGHTS, other_dev_api.get(f"/api/v1/models/{pk}/latest_weights/")),
        (
            "GET",
            WEIGHTS,
            other_dev_api.get(f"/api/v1/models/{pk}/latest_weights/", HTTP_ACCEPT="application/octet-stream"),
        ),
    ]
    assert [a[2].status_code for a in answers] == [401, 401, 403, 404, 400, 400, 415, 404, 404, 404]
    assert [nonconformity(schema, *answer) for answer in answers] == [None] * len(answers)
    assert answers[4][2].json()["code"] == "invalid_aggregator"
    assert "unknown aggregator 'nope'; available: " in answers[4][2].json()["detail"]


def test_paths_the_api_does_not_route_answer_a_json_404(schema, dev_api, client_api, experiment):
    answers = [
        ("GET", MODEL, dev_api.get("/api/v1/models/4.5e-246/")),
        ("GET", "/api/v1/model_updates/{id}/", dev_api.get("/api/v1/model_updates/1.5/")),
        (
            "GET",
            "/api/v1/models/{experiment_pk}/uploads/{upload_id}/",
            client_api.get(f"/api/v1/models/null/uploads/{experiment.pk}/"),
        ),
    ]
    assert [a[2].status_code for a in answers] == [404, 404, 404]
    assert [nonconformity(schema, *answer) for answer in answers] == [None] * len(answers)
    assert answers[0][2].json()["code"] == "not_found"
    assert dev_api.get("/dashboard/no-such-page/")["Content-Type"].startswith("text/html")  # pages stay pages
