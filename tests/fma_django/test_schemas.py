"""An experiment's JSON schemas (update, metrics, scores) never fetch anything, always resolve, and
run their patterns in linear time: refused when set, and harmless when one is already stored."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from fma_core.rounds import RoundEngine
from fma_django.models import Evaluation, Experiment, ModelUpdate
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

SCHEMA_FIELDS = ("update_schema", "metrics_schema", "client_agg_results_schema")
# What a fetched schema would say: a push checked against it fails naming this marker.
MARKER = "secret-marker-4d1e"
LEAKY_SCHEMA = {"required": [MARKER]}


class Listener:
    """A loopback HTTP server that serves ``LEAKY_SCHEMA`` and records every request it receives."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                body = json.dumps(LEAKY_SCHEMA).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/schema.json"
        # shutdown() returns at the loop's next poll: 0.5 s by default, at each test's teardown
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )


@pytest.fixture
def listener() -> Iterator[Listener]:
    listening = Listener()
    listening.thread.start()
    yield listening
    listening.server.shutdown()
    listening.server.server_close()
    listening.thread.join()


@pytest.fixture(params=["etc-passwd", "local-file", "http"])
def remote_ref(request, tmp_path: Path, listener: Listener) -> str:
    """A ``$ref`` that, followed, would read a file or reach an address from the server."""
    if request.param == "etc-passwd":
        return "file:///etc/passwd"
    if request.param == "local-file":
        secret = tmp_path / "secret.json"
        secret.write_text(json.dumps(LEAKY_SCHEMA))
        return secret.as_uri()
    return listener.url


def assert_nothing_leaked(response, listener: Listener) -> None:
    text = response.content.decode()
    assert MARKER not in text
    assert "root:" not in text  # /etc/passwd's first line
    assert listener.requests == []


def run_round(experiment: Experiment) -> None:
    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    assert outcome.status == "committed", outcome


# Item 1: no schema may ever make the server fetch anything


@pytest.mark.parametrize("field", SCHEMA_FIELDS)
@pytest.mark.parametrize("where", ["root", "nested"])
def test_a_remote_ref_is_refused_when_the_experiment_is_created(dev_api, remote_ref, listener, field, where):
    schema = {"$ref": remote_ref} if where == "root" else {"properties": {"loss": {"$ref": remote_ref}}}
    response = dev_api.post("/api/v1/models/", {"name": "m", field: schema}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_schema"
    assert field in response.json()["detail"]
    assert remote_ref in response.json()["detail"]
    assert not Experiment.objects.exists()
    assert_nothing_leaked(response, listener)


@pytest.mark.parametrize("field", SCHEMA_FIELDS)
def test_a_remote_ref_is_refused_when_the_experiment_is_changed(
    dev_api, experiment, remote_ref, listener, field
):
    response = dev_api.patch(f"/api/v1/models/{experiment.pk}/", {field: {"$ref": remote_ref}}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_schema"
    assert remote_ref in response.json()["detail"]
    experiment.refresh_from_db()
    assert getattr(experiment, field) is None
    assert_nothing_leaked(response, listener)


@pytest.mark.parametrize(
    "schema",
    [
        # a pointer into a keyword the validator does not know, whose contents then act as a schema
        lambda ref: {"$ref": "#/x-hidden", "x-hidden": {"$ref": ref}},
        lambda ref: {"$defs": {"a": {"$ref": ref}}, "allOf": [{"$ref": "#/$defs/a"}]},
        lambda ref: {"$dynamicRef": ref},
    ],
    ids=["through-unknown-keyword", "through-defs", "dynamic-ref"],
)
def test_a_remote_ref_reached_indirectly_is_refused(dev_api, listener, schema: Callable[[str], dict]):
    response = dev_api.post(
        "/api/v1/models/", {"name": "m", "metrics_schema": schema(listener.url)}, format="json"
    )
    assert response.status_code == 400, response.content
    assert listener.url in response.json()["detail"]
    assert not Experiment.objects.exists()
    assert_nothing_leaked(response, listener)


def test_the_admin_refuses_a_remote_ref(experiment, listener):
    from django.contrib.auth.models import User

    admin = APIClient()
    admin.force_login(User.objects.create_superuser("root", password="root-password"))
    form = {
        "name": experiment.name,
        "developer": experiment.developer_id,
        "aggregator": experiment.aggregator,
        "aggregator_params": "{}",
        "update_kind": experiment.update_kind,
        "metrics_schema": json.dumps({"$ref": listener.url}),
        "allow_aggregation": "on",
        "enrollments-TOTAL_FORMS": "0",
        "enrollments-INITIAL_FORMS": "0",
    }
    response = admin.post(f"/admin/fma_django/experiment/{experiment.pk}/change/", form)
    assert response.status_code == 200  # the form again, with the error
    assert listener.url in response.content.decode()
    experiment.refresh_from_db()
    assert experiment.metrics_schema is None
    assert listener.requests == []


@pytest.fixture
def stored(experiment: Experiment) -> Callable[[str, object], None]:
    """Write a schema straight to the database, as one set before schemas were checked would be."""

    def store(field: str, schema: object) -> None:
        Experiment.objects.filter(pk=experiment.pk).update(**{field: schema})

    return store


def test_a_stored_remote_metrics_ref_cannot_fetch_at_push_time(
    experiment, client_api, uploader, safetensors, stored, remote_ref, listener
):
    stored("metrics_schema", {"properties": {"loss": {"$ref": remote_ref}}})
    pushed = uploader(client_api, experiment.pk, safetensors(1.0), X_FMA_METRICS='{"loss": 0.5}')
    assert pushed.status_code == 400, pushed.content
    assert pushed.json()["code"] == "invalid_schema"
    assert "metrics_schema" in pushed.json()["detail"]
    started = client_api.post(
        f"/api/v1/models/{experiment.pk}/uploads/",
        {"size": 100, "sha256": "0" * 64, "metrics": {"loss": 0.5}},
        format="json",
    )
    assert started.status_code == 400, started.content
    assert ModelUpdate.objects.count() == 0
    assert_nothing_leaked(pushed, listener)
    assert_nothing_leaked(started, listener)


def test_a_stored_remote_update_schema_ref_cannot_fetch_at_push_time(
    experiment, client_api, stored, remote_ref, listener
):
    stored("update_schema", {"$ref": remote_ref})
    pushed = client_api.post(
        "/api/v1/model_updates/",
        {"federated_model": experiment.pk, "data": [[[0.0] * 3] * 4, [0.0] * 3]},
        format="json",
    )
    assert pushed.status_code == 400, pushed.content
    assert "update_schema" in pushed.json()["detail"]
    assert ModelUpdate.objects.count() == 0
    assert_nothing_leaked(pushed, listener)


def test_a_stored_remote_scores_ref_cannot_fetch_when_scoring(
    experiment, client_api, uploader, safetensors, stored, remote_ref, listener
):
    assert uploader(client_api, experiment.pk, safetensors(1.0)).status_code == 201
    run_round(experiment)
    stored("client_agg_results_schema", {"allOf": [{"$ref": remote_ref}]})
    scored = client_api.post(
        "/api/v1/client_aggregate_scores/",
        {"aggregate": experiment.aggregates.get().pk, "validation_results": {"f1": 0.9}},
        format="json",
    )
    assert scored.status_code == 400, scored.content
    assert "client_agg_results_schema" in scored.json()["detail"]
    assert Evaluation.objects.count() == 0
    assert_nothing_leaked(scored, listener)


# Item 13: a schema that cannot be used is refused when set, and harmless when stored


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"$ref": "#/$defs/missing"}, "#/$defs/missing"),
        ({"properties": {"loss": {"$ref": "#/definitions/nope"}}}, "#/definitions/nope"),
        (
            {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}},
            "#/$defs/",
        ),
        ({"$ref": "#"}, "#"),
        ({"$schema": "http://127.0.0.1:9/my-dialect", "type": "object"}, "http://127.0.0.1:9/my-dialect"),
        ({"type": 12}, "12"),
    ],
    ids=["missing-def", "missing-nested", "ref-cycle", "self-ref", "unknown-dialect", "bad-type"],
)
@pytest.mark.parametrize("field", SCHEMA_FIELDS)
def test_an_unusable_schema_is_refused_naming_the_fault(dev_api, experiment, field, schema, says):
    created = dev_api.post("/api/v1/models/", {"name": "m2", field: schema}, format="json")
    assert created.status_code == 400, created.content
    assert created.json()["code"] == "invalid_schema"
    assert field in created.json()["detail"]
    assert says in created.json()["detail"]
    changed = dev_api.patch(f"/api/v1/models/{experiment.pk}/", {field: schema}, format="json")
    assert changed.status_code == 400, changed.content
    assert says in changed.json()["detail"]
    assert list(Experiment.objects.values_list("pk", flat=True)) == [experiment.pk]
    experiment.refresh_from_db()
    assert getattr(experiment, field) is None


def test_a_legitimate_recursive_schema_is_accepted(make_experiment, enroll):
    """Recursion through a keyword that descends into the value ends with the value: it is allowed."""
    nested = {
        "$defs": {"layer": {"type": ["array", "number"], "items": {"$ref": "#/$defs/layer"}}},
        "$ref": "#/$defs/layer",
    }
    experiment = make_experiment(update_schema=nested)
    client = enroll(experiment)
    pushed = client.post(
        "/api/v1/model_updates/",
        {"federated_model": experiment.pk, "data": [[[0.0] * 3] * 4, [0.0] * 3]},
        format="json",
    )
    assert pushed.status_code == 201, pushed.content


@pytest.mark.parametrize(
    "schema",
    [{"$ref": "#/$defs/missing"}, {"$ref": "#"}, {"type": 12}],
    ids=["missing-def", "self-ref", "bad-type"],
)
def test_a_stored_unusable_metrics_schema_gives_a_clear_400(
    experiment, client_api, uploader, safetensors, stored, schema
):
    stored("metrics_schema", schema)
    pushed = uploader(client_api, experiment.pk, safetensors(1.0), X_FMA_METRICS='{"loss": 0.5}')
    assert pushed.status_code == 400, pushed.content
    assert pushed.json()["code"] == "invalid_schema"
    assert "metrics_schema" in pushed.json()["detail"]
    assert ModelUpdate.objects.count() == 0


# Item 2: a developer's regular expressions run in linear time, whatever the input

CATASTROPHIC = "^(a+)+$"  # exponential for a backtracking engine on "aaa…a!"
LONG = "a" * 5000


@pytest.fixture
def forbid_backtracking(monkeypatch) -> Callable[[], None]:
    """Once called, Python's backtracking ``re`` refuses to compile ``CATASTROPHIC``: whatever still
    evaluates that pattern must be the linear-time engine. (Compiling is where ``re.search`` and
    ``re.compile`` both start.)"""
    import re

    compile_original = re._compile

    def guarded(pattern, flags):
        if isinstance(pattern, str) and "(a+)+" in pattern:
            raise AssertionError(f"{pattern!r} reached Python's backtracking re engine")
        return compile_original(pattern, flags)

    return lambda: monkeypatch.setattr(re, "_compile", guarded)


def metrics_header(metrics: dict) -> dict[str, str]:
    return {"X_FMA_METRICS": json.dumps(metrics)}


@pytest.mark.parametrize(
    ("schema", "refused", "accepted"),
    [
        ({"propertyNames": {"pattern": CATASTROPHIC}}, {LONG + "!": 1.0}, {LONG: 1.0}),
        (
            {"patternProperties": {CATASTROPHIC: {"maximum": 1}}},
            {LONG: 5.0},  # the name matches, so its value is checked (and too large)
            {LONG + "!": 5.0},
        ),
        (
            {"patternProperties": {CATASTROPHIC: {}}, "additionalProperties": False},
            {LONG + "!": 1.0},
            {LONG: 1.0},
        ),
    ],
    ids=["propertyNames-pattern", "patternProperties", "additionalProperties"],
)
def test_a_catastrophic_pattern_in_a_metrics_schema_runs_in_linear_time(
    make_experiment, enroll, uploader, safetensors, forbid_backtracking, schema, refused, accepted
):
    experiment = make_experiment(metrics_schema=schema)
    client = enroll(experiment)
    forbid_backtracking()
    no = uploader(client, experiment.pk, safetensors(1.0), **metrics_header(refused))
    assert no.status_code == 400, no.content
    assert no.json()["code"] == "schema_mismatch"
    yes = uploader(client, experiment.pk, safetensors(1.0), **metrics_header(accepted))
    assert yes.status_code == 201, yes.content


def test_a_catastrophic_pattern_in_a_scores_schema_runs_in_linear_time(
    make_experiment, enroll, uploader, safetensors, forbid_backtracking
):
    experiment = make_experiment(
        client_agg_results_schema={"properties": {"label": {"type": "string", "pattern": CATASTROPHIC}}}
    )
    client = enroll(experiment)
    assert uploader(client, experiment.pk, safetensors(1.0)).status_code == 201
    run_round(experiment)
    forbid_backtracking()
    url = "/api/v1/client_aggregate_scores/"
    aggregate = experiment.aggregates.get().pk
    no = client.post(
        url, {"aggregate": aggregate, "validation_results": {"label": LONG + "!"}}, format="json"
    )
    assert (no.status_code, no.json()["code"]) == (400, "schema_mismatch")
    yes = client.post(url, {"aggregate": aggregate, "validation_results": {"label": LONG}}, format="json")
    assert yes.status_code == 201, yes.content


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"properties": {"name": {"pattern": "(a)\\1"}}}, "(a)\\1"),
        ({"properties": {"name": {"pattern": "^(?=a)"}}}, "^(?=a)"),
        ({"patternProperties": {"(?<!x)y": {}}}, "(?<!x)y"),
        ({"propertyNames": {"pattern": "[unclosed"}}, "[unclosed"),
        (
            {"patternProperties": {"^l": {}}, "unevaluatedProperties": False},
            "unevaluatedProperties",
        ),
    ],
    ids=["backreference", "lookahead", "lookbehind", "malformed", "unevaluated-with-patterns"],
)
def test_a_pattern_the_linear_engine_cannot_run_is_refused(dev_api, schema, says):
    response = dev_api.post("/api/v1/models/", {"name": "m", "metrics_schema": schema}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_schema"
    assert "metrics_schema" in response.json()["detail"]
    assert says in response.json()["detail"]
    assert not Experiment.objects.exists()


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"x": {"pattern": "(a)\\1"}}},
        {"patternProperties": {CATASTROPHIC: {}}, "unevaluatedProperties": False},
    ],
    ids=["backreference", "unevaluated-with-patterns"],
)
def test_a_stored_pattern_the_linear_engine_cannot_run_gives_a_clear_400(
    experiment, client_api, uploader, safetensors, stored, forbid_backtracking, schema
):
    stored("metrics_schema", schema)
    forbid_backtracking()
    pushed = uploader(client_api, experiment.pk, safetensors(1.0), **metrics_header({LONG + "!": 1.0}))
    assert pushed.status_code == 400, pushed.content
    assert pushed.json()["code"] == "invalid_schema"
    assert ModelUpdate.objects.count() == 0


def test_a_schema_that_expands_beyond_the_bound_through_refs_is_refused(dev_api):
    """40 lines of allOf over $ref that would stand for 2^40 checks of every push."""
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(40)}
    bomb = {"$defs": {**defs, "d40": {"type": "number"}}, "$ref": "#/$defs/d0"}
    response = dev_api.post("/api/v1/models/", {"name": "m", "metrics_schema": bomb}, format="json")
    assert response.status_code == 400, response.content
    assert "10,000 subschemas" in response.json()["detail"]


def test_older_dialects_apply_with_their_own_keywords(make_experiment, enroll, uploader, safetensors):
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"loss": {"type": "number", "minimum": 0}},
        "properties": {"loss": {"$ref": "#/definitions/loss"}},
    }
    experiment = make_experiment(metrics_schema=draft7)
    client = enroll(experiment)
    refused = uploader(client, experiment.pk, safetensors(1.0), **metrics_header({"loss": -1}))
    assert (refused.status_code, refused.json()["code"]) == (400, "schema_mismatch")
    assert uploader(client, experiment.pk, safetensors(1.0), **metrics_header({"loss": 1})).status_code == 201


# Item 2, the same class: whatever the schema, checking a value costs at most a bound linear in its size


def test_a_schema_that_doubles_its_work_at_each_level_is_stopped_at_a_bound(
    make_experiment, enroll, uploader, safetensors
):
    """Two in-place branches that each recurse into the same child: 2^depth checks of one value."""
    doubling = {"allOf": [{"properties": {"a": {"$ref": "#"}}}, {"properties": {"a": {"$ref": "#"}}}]}
    experiment = make_experiment(client_agg_results_schema=doubling)
    client = enroll(experiment)
    assert uploader(client, experiment.pk, safetensors(1.0)).status_code == 201
    run_round(experiment)
    deep: dict = {"f1": 0.5}
    for _ in range(16):  # 2^16 checks unbounded; the bound is far lower for a value this small
        deep = {"a": deep}
    url = "/api/v1/client_aggregate_scores/"
    aggregate = experiment.aggregates.get().pk
    refused = client.post(url, {"aggregate": aggregate, "validation_results": deep}, format="json")
    assert refused.status_code == 400, refused.content
    assert refused.json()["code"] == "schema_too_costly"
    assert Evaluation.objects.count() == 0
    shallow = client.post(
        url, {"aggregate": aggregate, "validation_results": {"a": {"f1": 0.5}}}, format="json"
    )
    assert shallow.status_code == 201, shallow.content


@pytest.mark.parametrize(
    ("items", "unique"),
    [
        ([{"a": 1}, {"a": 2}, [1], [1.5]], True),
        ([{"a": 1}, {"a": 1.0}], False),
        ([[1, {"b": 2}], [1, {"b": 2}]], False),
    ],
)
def test_unique_items_compares_json_values(make_experiment, enroll, uploader, safetensors, items, unique):
    experiment = make_experiment(client_agg_results_schema={"properties": {"runs": {"uniqueItems": True}}})
    client = enroll(experiment)
    assert uploader(client, experiment.pk, safetensors(1.0)).status_code == 201
    run_round(experiment)
    scored = client.post(
        "/api/v1/client_aggregate_scores/",
        {"aggregate": experiment.aggregates.get().pk, "validation_results": {"runs": items}},
        format="json",
    )
    assert scored.status_code == (201 if unique else 400), scored.content


@pytest.mark.parametrize("where", ["root", "nested"])
def test_the_validator_itself_cannot_fetch_even_if_the_rules_missed_a_ref(monkeypatch, listener, where):
    """Defence in depth: with the checks of the schema switched off, its registry still cannot retrieve."""
    from fma_django import json_schemas
    from fma_django.errors import ValidationFailed

    monkeypatch.setattr(json_schemas, "_problem", lambda schema: None)
    schema = {"$ref": listener.url} if where == "root" else {"properties": {"loss": {"$ref": listener.url}}}
    with pytest.raises(ValidationFailed) as refused:
        json_schemas.schema_validate(
            field="metrics_schema", schema=schema, value={"loss": 1.0}, what="metrics"
        )
    assert refused.value.code == "invalid_schema"
    assert MARKER not in refused.value.detail
    assert listener.requests == []
