"""Hostile input gets a clear 4xx, never a 500, and nothing is stored (issue 13, items 7 to 12).

Each test covers a class of input over every endpoint that takes it, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from urllib.parse import urlencode

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.utils.http import content_disposition_header
from rest_framework.test import APIClient

from fma_core.rounds import RoundEngine
from fma_core.weights import to_bytes
from fma_django.models import ModelArtifact, ModelUpdate, UploadSession
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

OUT_OF_RANGE = [str(2**63), "99999999999999999999", "-99999999999999999999", "9" * 400]
NOT_WHOLE = ["1e30", "1.5", "true", "0x10"]


@pytest.fixture
def aggregate(experiment, client_api, uploader, safetensors):
    assert uploader(client_api, experiment.pk, safetensors(2.0)).status_code == 201
    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    assert outcome.status == "committed", outcome
    return experiment.aggregates.get()


# Item 7: integers beyond the database's 64 bits


FILTERS = [
    ("/api/v1/model_updates/", "federated_model"),
    ("/api/v1/model_aggregates/", "federated_model"),
    ("/api/v1/model_aggregates/", "round_number"),
    ("/api/v1/client_aggregate_scores/", "aggregate"),
]


@pytest.mark.parametrize(("path", "name"), FILTERS)
@pytest.mark.parametrize("value", OUT_OF_RANGE + NOT_WHOLE)
def test_an_integer_filter_out_of_range_is_a_400_naming_it(path, name, value, dev_api, client_api, aggregate):
    for api in (dev_api, client_api):
        response = api.get(path, {name: value})
        assert response.status_code == 400, (path, name, value, response.content)
        assert name in response.json()


@pytest.mark.parametrize(("path", "name"), FILTERS)
def test_an_integer_filter_in_range_still_filters(path, name, dev_api, aggregate):
    value = {"federated_model": aggregate.experiment_id, "round_number": 1, "aggregate": aggregate.pk}[name]
    assert dev_api.get(path, {name: value}).status_code == 200
    assert dev_api.get(path, {name: 2**31 - 1}).json()["count"] == 0  # within every column's range


PATH_IDS = [
    ("get", "/api/v1/models/{id}/"),
    ("patch", "/api/v1/models/{id}/"),
    ("delete", "/api/v1/models/{id}/"),
    ("get", "/api/v1/models/{id}/get_latest_aggregate/"),
    ("get", "/api/v1/models/{id}/latest_weights/"),
    ("get", "/api/v1/models/{id}/metrics/"),
    ("get", "/api/v1/models/{id}/enrollment_tokens/"),
    ("post", "/api/v1/models/{id}/register_client/"),
    ("post", "/api/v1/models/{id}/upload_update/"),
    ("post", "/api/v1/models/{id}/uploads/"),
    ("delete", "/api/v1/models/{experiment}/enrollment_tokens/{id}/"),
    ("get", "/api/v1/model_updates/{id}/"),
    ("get", "/api/v1/model_updates/{id}/weights/"),
    ("get", "/api/v1/model_aggregates/{id}/"),
    ("patch", "/api/v1/model_aggregates/{id}/"),
    ("post", "/api/v1/model_aggregates/{id}/publish_aggregate/"),
    ("get", "/api/v1/model_aggregates/{id}/weights/"),
    ("get", "/api/v1/model_artifacts/{id}/"),
    ("get", "/api/v1/model_artifacts/{id}/weights/"),
    ("get", "/api/v1/client_aggregate_scores/{id}/"),
]


@pytest.mark.parametrize(("method", "path"), PATH_IDS)
@pytest.mark.parametrize("value", OUT_OF_RANGE[:3])
def test_a_path_id_out_of_range_is_a_404(method, path, value, dev_api, client_api, experiment):
    url = path.format(id=value, experiment=experiment.pk)
    statuses = set()
    for api in (dev_api, client_api):  # one of them may not call this operation at all: 403
        response = getattr(api, method)(url, {}, format="json")
        assert response.status_code in (403, 404), (method, url, response.content)
        statuses.add(response.status_code)
    assert 404 in statuses


@pytest.mark.parametrize("value", OUT_OF_RANGE[:3])
def test_an_upload_path_out_of_range_is_a_4xx(value, client_api, experiment, safetensors):
    body = safetensors()
    started = client_api.post(
        f"/api/v1/models/{experiment.pk}/uploads/",
        {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()},
        format="json",
    )
    assert started.status_code == 201, started.content
    upload = started.json()["id"]
    base = f"/api/v1/models/{experiment.pk}/uploads/{upload}/"
    part = client_api.generic("PUT", f"{base}parts/{value}/", b"x", content_type="application/octet-stream")
    assert part.status_code in (400, 404), part.content
    for url in (
        f"/api/v1/models/{value}/uploads/{upload}/",
        f"/api/v1/models/{value}/uploads/{upload}/complete/",
    ):
        assert client_api.get(url).status_code in (404, 405)
        assert client_api.post(url).status_code in (404, 405)


def body_ids(experiment, aggregate):
    """Every integer a JSON body carries: (caller, method, path, body, field)."""
    e, a = experiment.pk, aggregate.pk
    return [
        (
            "client",
            "post",
            "/api/v1/model_updates/",
            {"federated_model": "X", "data": [[0.0]]},
            "federated_model",
        ),
        (
            "client",
            "post",
            "/api/v1/model_updates/",
            {"federated_model": e, "data": [[0.0]], "base_aggregate": "X"},
            "base_aggregate",
        ),
        (
            "client",
            "post",
            "/api/v1/client_aggregate_scores/",
            {"aggregate": "X", "validation_results": {}},
            "aggregate",
        ),
        (
            "client",
            "post",
            "/api/v1/client_aggregate_scores/",
            {"aggregate": a, "validation_results": {}, "federated_model": "X"},
            "federated_model",
        ),
        (
            "client",
            "post",
            f"/api/v1/models/{e}/uploads/",
            {"size": 100, "sha256": "0" * 64, "base_aggregate": "X"},
            "base_aggregate",
        ),
        ("staff", "post", "/api/v1/models/", {"name": "m", "developer": "X"}, "developer"),
        ("dev", "post", "/api/v1/models/", {"name": "m", "furthest_base_agg": "X"}, "furthest_base_agg"),
        ("dev", "post", "/api/v1/models/", {"name": "m", "max_update_bytes": "X"}, "max_update_bytes"),
        ("dev", "patch", f"/api/v1/models/{e}/", {"furthest_base_agg": "X"}, "furthest_base_agg"),
        ("dev", "patch", f"/api/v1/models/{e}/", {"max_update_bytes": "X"}, "max_update_bytes"),
        (
            "dev",
            "post",
            f"/api/v1/models/{e}/enrollment_tokens/",
            {"expires_in_seconds": "X"},
            "expires_in_seconds",
        ),
        ("dev", "post", f"/api/v1/models/{e}/enrollment_tokens/", {"max_uses": "X"}, "max_uses"),
    ]


@pytest.mark.parametrize("as_number", [True, False], ids=["number", "string"])
@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_a_body_integer_out_of_range_is_a_400_naming_it(
    value, as_number, experiment, aggregate, dev_api, client_api, api_for, developer
):
    callers = {
        "client": client_api,
        "dev": dev_api,
        "staff": api_for(User.objects.create_user("a", is_staff=True)),
    }
    updates = ModelUpdate.objects.count()
    literal = int(value) if as_number else value
    for caller, method, path, body, field in body_ids(experiment, aggregate):
        sent = {k: (literal if v == "X" else v) for k, v in body.items()}
        response = getattr(callers[caller], method)(path, sent, format="json")
        assert response.status_code == 400, (path, field, value, response.content)
        assert field in str(response.json()), (path, field, response.content)
    assert ModelUpdate.objects.count() == updates


@pytest.mark.parametrize("header", ["X_FMA_BASE_AGGREGATE"])
@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_a_header_integer_out_of_range_is_a_400_naming_it(
    header, value, experiment, client_api, uploader, safetensors, stored_files
):
    before = stored_files()
    response = uploader(client_api, experiment.pk, safetensors(), **{header: value})
    assert response.status_code == 400, response.content
    assert header.removeprefix("X_FMA_").lower() in response.json()["detail"]
    assert stored_files() == before
    assert not ModelUpdate.objects.exists()


# Item 8: JSON nested too deeply


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def json_bodies(experiment, aggregate):
    """Every operation that reads a JSON body: (caller, method, path)."""
    e, a = experiment.pk, aggregate.pk
    return [
        ("anonymous", "post", "/api-token-auth/"),
        ("anonymous", "post", f"/api/v1/models/{e}/register_client/"),
        ("dev", "post", "/api/v1/models/"),
        ("dev", "put", f"/api/v1/models/{e}/"),
        ("dev", "patch", f"/api/v1/models/{e}/"),
        ("dev", "post", f"/api/v1/models/{e}/enrollment_tokens/"),
        ("dev", "post", f"/api/v1/models/{e}/revoke_client/"),
        ("dev", "patch", f"/api/v1/model_aggregates/{a}/"),
        ("dev", "post", f"/api/v1/model_aggregates/{a}/publish_aggregate/"),
        ("client", "post", "/api/v1/model_updates/"),
        ("client", "post", "/api/v1/client_aggregate_scores/"),
        ("client", "post", f"/api/v1/models/{e}/uploads/"),
    ]


@pytest.mark.parametrize("levels", [200, 1_000, 100_000])
@pytest.mark.parametrize("nested_in", [None, "metrics"])
def test_json_nested_too_deeply_is_a_400_everywhere(
    levels, nested_in, experiment, aggregate, dev_api, client_api
):
    callers = {"anonymous": APIClient(), "dev": dev_api, "client": client_api}
    body = deep(levels) if nested_in is None else f'{{"{nested_in}": {deep(levels)}}}'
    updates = ModelUpdate.objects.count()
    for caller, method, path in json_bodies(experiment, aggregate):
        response = getattr(callers[caller], method)(path, body, content_type="application/json")
        assert response.status_code == 400, (path, response.content[:300])
        assert "nested" in response.json()["detail"], (path, response.content[:300])
    assert ModelUpdate.objects.count() == updates


@pytest.mark.parametrize("levels", [200, 1_000, 100_000])
def test_json_in_an_upload_header_or_query_nested_too_deeply_is_a_400(
    levels, experiment, client_api, uploader, safetensors, stored_files
):
    before = stored_files()
    by_header = uploader(client_api, experiment.pk, safetensors(), X_FMA_METRICS=deep(levels))
    by_query = client_api.generic(
        "POST",
        f"/api/v1/models/{experiment.pk}/upload_update/?metrics={deep(min(levels, 2_000))}",
        safetensors(),
        content_type="application/octet-stream",
    )
    for response in (by_header, by_query):
        assert response.status_code == 400, response.content[:300]
        assert "metrics" in response.json()["detail"]
        assert "nested" in response.json()["detail"]
    assert stored_files() == before
    assert not ModelUpdate.objects.exists()


def test_json_nested_within_the_limit_is_accepted(aggregate, client_api):
    """A score's results are free-form JSON (the original protocol), so nesting within the limit is kept."""
    results = {"a": [[[[[[[[1.0]]]]]]]]}
    response = client_api.post(
        "/api/v1/client_aggregate_scores/",
        {"aggregate": aggregate.pk, "validation_results": results},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["validation_results"] == results


@pytest.mark.parametrize("levels", [200, 1_000, 100_000])
def test_json_in_a_form_field_nested_too_deeply_is_a_400(levels, experiment, aggregate, dev_api, client_api):
    """Form and multipart bodies carry JSON fields as text, which DRF's JSONField parses itself."""
    e, a = experiment.pk, aggregate.pk
    cases = [
        (dev_api, "post", "/api/v1/models/", {"name": "m", "aggregator_params": deep(levels)}),
        (dev_api, "patch", f"/api/v1/models/{e}/", {"metrics_schema": deep(levels)}),
        (client_api, "post", "/api/v1/model_updates/", {"federated_model": e, "data": deep(levels)}),
        (
            client_api,
            "post",
            "/api/v1/client_aggregate_scores/",
            {"aggregate": a, "validation_results": deep(levels)},
        ),
        (
            client_api,
            "post",
            f"/api/v1/models/{e}/uploads/",
            {"size": 9, "sha256": "0" * 64, "metrics": deep(levels)},
        ),
    ]
    for api, method, path, body in cases:
        for encoding in ("multipart", "form"):
            if encoding == "form":
                response = getattr(api, method)(
                    path, urlencode(body), content_type="application/x-www-form-urlencoded"
                )
            else:
                response = getattr(api, method)(path, body, format="multipart")
            assert response.status_code == 400, (path, encoding, response.content[:300])
            assert "nested" in str(response.json()), (path, encoding, response.content[:300])


# Item 9: num_examples (and every other integer of an update's metadata) on every upload path

BAD_COUNTS = [2**63, 2**64, 10**30, 0, -1, 1e30, 1.5, True, "1e30", "1.5", "ten", "true"]


def upload_paths(api, experiment, body: bytes):
    """Every way to send an update's metadata with a bad value for ``name``: callables (name, value) → response."""
    e = experiment.pk

    def header(name, value):
        return upload(
            api,
            e,
            body,
            **{f"X_FMA_{name.upper()}": json.dumps(value) if not isinstance(value, str) else value},
        )

    def query(name, value):
        text = json.dumps(value) if not isinstance(value, str) else value
        return api.generic(
            "POST", f"/api/v1/models/{e}/upload_update/?{urlencode({name: text})}", body, content_type=STREAM
        )

    def session_json(name, value):
        return api.post(f"/api/v1/models/{e}/uploads/", {**session_fields(body), name: value}, format="json")

    def session_form(name, value):
        text = json.dumps(value) if not isinstance(value, str) else value
        return api.post(
            f"/api/v1/models/{e}/uploads/", {**session_fields(body), name: text}, format="multipart"
        )

    def v1_json(name, value):
        data = [np.zeros((4, 3)).tolist(), [0.0, 0.0, 0.0]]
        return api.post(
            "/api/v1/model_updates/", {"federated_model": e, "data": data, name: value}, format="json"
        )

    return {
        "header": header,
        "query": query,
        "session": session_json,
        "session_form": session_form,
        "v1_json": v1_json,
    }


STREAM = "application/octet-stream"


def upload(api, experiment_id, body, **headers):
    meta = {"HTTP_" + name.upper(): value for name, value in headers.items()}
    return api.generic(
        "POST", f"/api/v1/models/{experiment_id}/upload_update/", body, content_type=STREAM, **meta
    )


def session_fields(body: bytes) -> dict:
    return {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize("path", ["header", "query", "session", "session_form", "v1_json"])
@pytest.mark.parametrize("value", BAD_COUNTS, ids=repr)
def test_num_examples_out_of_range_is_a_400_naming_the_field_and_range(
    path, value, experiment, client_api, safetensors, stored_files
):
    if path in ("header", "query", "session_form") and value is True:
        value = "true"  # text has no booleans
    before = stored_files()
    response = upload_paths(client_api, experiment, safetensors())[path]("num_examples", value)
    assert response.status_code == 400, (path, value, response.content)
    said = str(response.json())
    assert "num_examples" in said, said
    assert f"1 to {2**63 - 1}" in said, said
    assert stored_files() == before
    assert not ModelUpdate.objects.exists()
    assert not UploadSession.objects.exists()


@pytest.mark.parametrize("path", ["session", "session_form"])
@pytest.mark.parametrize("value", [2**64, 10**30, 0, -1, 1e30, 1.5, "ten"], ids=repr)
def test_a_declared_size_out_of_range_is_a_400_naming_it(path, value, experiment, client_api, safetensors):
    response = upload_paths(client_api, experiment, safetensors())[path]("size", value)
    assert response.status_code == 400, response.content
    assert "size" in response.json()
    assert not UploadSession.objects.exists()


@pytest.mark.parametrize("length", ["-1", "99999999999999999999", "1e3", "ten"])
def test_a_bad_content_length_is_a_4xx(length, experiment, client_api, safetensors, stored_files):
    before = stored_files()
    response = client_api.generic(
        "POST",
        f"/api/v1/models/{experiment.pk}/upload_update/",
        safetensors(),
        content_type=STREAM,
        CONTENT_LENGTH=length,
    )
    assert 400 <= response.status_code < 500, response.content
    assert stored_files() == before
    assert not ModelUpdate.objects.exists()


def test_num_examples_at_the_top_of_its_range_is_accepted(experiment, client_api, safetensors):
    response = upload(client_api, experiment.pk, safetensors(), X_FMA_NUM_EXAMPLES=str(2**63 - 1))
    assert response.status_code == 201, response.content
    assert ModelUpdate.objects.get().num_examples == 2**63 - 1


# Item 10: artifact versions

GOOD_VERSIONS = ["1.0.1", "2.0.0-rc.1+build.5", "round-3", "v2", "9", "3.0", "2024_06_01"]
BAD_VERSIONS = [
    "1.0\r\nX-Injected: 1",
    'a"b',
    "../x",
    "a/b",
    "1 0",
    "a;b",
    "\t",
    "-1",
    ".1",
    "ü1",
    "x" * 65,
    "",
]


@pytest.mark.parametrize("version", GOOD_VERSIONS)
def test_a_semantic_version_like_name_is_published(version, dev_api, aggregate):
    response = dev_api.post(
        f"/api/v1/model_aggregates/{aggregate.pk}/publish_aggregate/", {"version": version}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["version"] == version


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=repr)
def test_a_version_outside_the_rule_is_a_400_saying_the_rule(version, dev_api, aggregate):
    artifacts = ModelArtifact.objects.count()
    response = dev_api.post(
        f"/api/v1/model_aggregates/{aggregate.pk}/publish_aggregate/", {"version": version}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_version"
    assert "letters, digits" in response.json()["detail"]
    assert ModelArtifact.objects.count() == artifacts


@pytest.mark.parametrize("version", ["1.0\r\nX-Injected: 1", 'a"b', "ü\\1"], ids=repr)
def test_a_stored_version_cannot_break_a_download(version, experiment, client_api, aggregate):
    """Versions stored before publishing checked them still download, with a well-formed header."""
    artifact = ModelArtifact.objects.create(
        experiment=experiment,
        aggregate=aggregate,
        version=version,
        weights_key=aggregate.weights_key,
        content_id=aggregate.content_id,
        size_bytes=aggregate.size_bytes,
    )
    response = client_api.get(f"/api/v1/model_artifacts/{artifact.pk}/weights/")
    assert response.status_code == 200
    disposition = response["Content-Disposition"]
    filename = f"artifact-{experiment.pk}-{version}.safetensors"
    assert disposition == content_disposition_header(True, filename)
    assert "\r" not in disposition
    assert "\n" not in disposition
    assert "X-Injected" not in response.headers
    with weight_store().open(aggregate.weights_key) as stored:
        assert b"".join(response.streaming_content) == stored.read()


# Item 11: idempotency keys (and other strings stored in bounded columns)

BAD_KEYS = ["k" * 129, "k" * 5_000, "a b", "tab\there", "\x7f", "clé"]


def idempotent_paths(api, experiment, body: bytes):
    """Every way to send an idempotency key: callables (key) → response."""
    e = experiment.pk
    data = [np.zeros((4, 3)).tolist(), [0.0, 0.0, 0.0]]
    return {
        "header": lambda key: upload(api, e, body, IDEMPOTENCY_KEY=key),
        "query": lambda key: api.generic(
            "POST",
            f"/api/v1/models/{e}/upload_update/?{urlencode({'idempotency_key': key})}",
            body,
            content_type=STREAM,
        ),
        "session": lambda key: api.post(
            f"/api/v1/models/{e}/uploads/", {**session_fields(body), "idempotency_key": key}, format="json"
        ),
        "session_header": lambda key: api.post(
            f"/api/v1/models/{e}/uploads/", session_fields(body), format="json", HTTP_IDEMPOTENCY_KEY=key
        ),
        "v1_json": lambda key: api.post(
            "/api/v1/model_updates/",
            {"federated_model": e, "data": data, "idempotency_key": key},
            format="json",
        ),
    }


@pytest.mark.parametrize("path", ["header", "query", "session", "session_header", "v1_json"])
@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k[:12]))
def test_an_idempotency_key_outside_the_rule_is_a_400_saying_it(
    path, key, experiment, client_api, safetensors, stored_files
):
    if path in ("header", "session_header") and not key.isascii():
        key = key.encode().decode("latin-1")  # what a WSGI server hands Django for UTF-8 header bytes
    before = stored_files()
    response = idempotent_paths(client_api, experiment, safetensors())[path](key)
    assert response.status_code == 400, (path, response.content[:300])
    said = str(response.json())
    assert "idempotency" in said.lower(), said
    assert "1 to 128" in said, said
    assert stored_files() == before
    assert not ModelUpdate.objects.exists()
    assert not UploadSession.objects.exists()


@pytest.mark.parametrize("path", ["header", "query", "session", "session_header", "v1_json"])
def test_an_idempotency_key_of_128_printable_characters_is_kept(path, experiment, client_api, safetensors):
    key = ("k-~!" * 32)[:128]
    response = idempotent_paths(client_api, experiment, safetensors())[path](key)
    assert response.status_code == 201, response.content
    assert response.json()["idempotency_key"] == key


def test_strings_the_api_stores_are_checked_against_their_columns(dev_api, experiment):
    for body in ({"name": "n" * 256}, {"aggregator": "a" * 65}, {"requirement": "r" * 65}):
        response = dev_api.patch(f"/api/v1/models/{experiment.pk}/", body, format="json")
        assert response.status_code == 400, (body, response.content)
        assert next(iter(body)) in response.json()


# Item 12: safetensors headers above the limit

HEADER_LIMIT = r"header .* above the limit of 16,777,216 bytes"


def padded_header(weights: dict) -> bytes:
    """An update of the experiment's tensors whose header carries 17 MiB of metadata."""
    return to_bytes(weights, metadata={"padding": "x" * (17 * 2**20)})


def test_an_update_with_an_oversized_header_is_refused_in_one_request(
    experiment, client_api, stored_files, weights
):
    before = stored_files()
    response = upload(client_api, experiment.pk, padded_header(weights()))
    assert response.status_code == 400, response.content[:300]
    assert re.search(HEADER_LIMIT, response.json()["detail"]), response.json()
    assert stored_files() == before
    assert not ModelUpdate.objects.exists()


def test_an_update_with_an_oversized_header_is_refused_when_its_upload_completes(
    settings, experiment, client_api, stored_files, weights
):
    settings.FMA_UPLOAD_PART_BYTES = 8 * 2**20
    before = stored_files()
    body = padded_header(weights())
    session = client_api.post(f"/api/v1/models/{experiment.pk}/uploads/", session_fields(body), format="json")
    assert session.status_code == 201, session.content
    for target in session.json()["targets"]:
        part = body[target["offset"] : target["offset"] + target["size"]]
        assert client_api.generic("PUT", target["url"], part, content_type=STREAM).status_code == 200
    completed = client_api.post(f"/api/v1/models/{experiment.pk}/uploads/{session.json()['id']}/complete/")
    assert completed.status_code == 400, completed.content[:300]
    assert re.search(HEADER_LIMIT, completed.json()["detail"]), completed.json()
    assert UploadSession.objects.get().state == "rejected"
    assert stored_files() == before
    assert not ModelUpdate.objects.exists()


def test_a_stored_update_with_an_oversized_header_is_quarantined_by_the_round(
    experiment, client_api, uploader, safetensors, weights
):
    """An update accepted before the limit existed is never parsed again: the round quarantines it."""
    assert uploader(client_api, experiment.pk, safetensors(1.0)).status_code == 201
    good = ModelUpdate.objects.get()
    body = padded_header(weights(3.0))
    stored = weight_store().put(f"updates/{experiment.pk}/oversized.safetensors", io.BytesIO(body))
    oversized = ModelUpdate.objects.create(
        experiment=experiment,
        client=good.client,
        weights_key=stored.key,
        content_id=stored.sha256,
        size_bytes=stored.size,
    )
    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    assert outcome.status == "committed", outcome
    oversized.refresh_from_db()
    good.refresh_from_db()
    assert oversized.status == "quarantined"
    assert re.search(HEADER_LIMIT, oversized.status_reason), oversized.status_reason
    assert good.status == "consumed"
