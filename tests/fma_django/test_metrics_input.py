"""Metrics a client reports with an update are finite numbers by name, on every path that takes them:
anything else is a 400 that names the metric (never a 500, never silently left out)."""

from __future__ import annotations

import json
from urllib.parse import quote

import numpy as np
import pytest

from fma_core.rounds import RoundEngine
from fma_django.models import Evaluation, Event, EventKind, ModelUpdate, UploadSession
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

LAYERS = [np.zeros((4, 3)).tolist(), [0.0, 0.0, 0.0]]


def send(path: str, api, experiment, safetensors, metrics: str):
    """Send ``metrics`` (JSON text, possibly with NaN/Infinity) on one of the paths that take metrics."""
    models = f"/api/v1/models/{experiment.pk}"
    if path == "header":
        return api.generic(
            "POST",
            f"{models}/upload_update/",
            safetensors(1.0),
            content_type="application/octet-stream",
            HTTP_X_FMA_METRICS=metrics,
        )
    if path == "query":
        return api.generic(
            "POST",
            f"{models}/upload_update/?metrics={quote(metrics)}",
            safetensors(1.0),
            content_type="application/octet-stream",
        )
    session = {"size": len(safetensors(1.0)), "sha256": "0" * 64}
    update = {"federated_model": experiment.pk, "data": LAYERS}
    if path == "upload-session-form":
        return api.post(f"{models}/uploads/", {**session, "metrics": metrics}, format="multipart")
    if path == "v1-form":
        return api.post(
            "/api/v1/model_updates/",
            {**update, "data": json.dumps(LAYERS), "metrics": metrics},
            format="multipart",
        )
    body = json.dumps({**(session if path == "upload-session-json" else update), "metrics": "METRICS"})
    body = body.replace('"METRICS"', metrics)  # the client's own JSON text, as sent
    url = f"{models}/uploads/" if path == "upload-session-json" else "/api/v1/model_updates/"
    return api.generic("POST", url, body, content_type="application/json")


ALL_PATHS = ["header", "query", "upload-session-form", "v1-form", "upload-session-json", "v1-json"]


def assert_refused(response, says: str) -> None:
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_metrics", response.content
    assert says in response.json()["detail"]
    assert ModelUpdate.objects.count() == 0
    assert UploadSession.objects.count() == 0
    assert Event.objects.filter(kind=EventKind.UPDATE_REJECTED).count() == 1


@pytest.mark.parametrize(
    ("path", "metrics"),
    [
        *(
            (path, value)
            for path in ("header", "query")
            for value in ("NaN", "Infinity", "-Infinity", "1e400")
        ),
        ("upload-session-form", "1e400"),  # JSON's parser reads 1e400 as infinity
        ("v1-form", "1e400"),
    ],
)
def test_a_metric_that_is_not_finite_is_refused(experiment, client_api, safetensors, path, metrics):
    """JSON has no NaN or Infinity, but Python's parser (headers, query) reads them."""
    assert_refused(send(path, client_api, experiment, safetensors, f'{{"loss": {metrics}}}'), "loss")


@pytest.mark.parametrize(
    ("path", "metrics"),
    [
        *((path, "NaN") for path in ("upload-session-form", "v1-form", "upload-session-json", "v1-json")),
        ("upload-session-json", "1e400"),
        ("v1-json", "1e400"),
    ],
)
def test_a_json_field_that_is_not_finite_is_refused_by_the_strict_parser(
    experiment, client_api, safetensors, path, metrics
):
    """DRF reads bodies and form fields as strict JSON: these never reach the rules."""
    response = send(path, client_api, experiment, safetensors, f'{{"loss": {metrics}}}')
    assert response.status_code == 400, response.content
    assert (ModelUpdate.objects.count(), UploadSession.objects.count()) == (0, 0)


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize(
    ("metrics", "says"),
    [
        ('{"loss": 1' + "0" * 400 + "}", "loss"),  # a whole number no float holds
        ('{"accuracy": "high"}', "accuracy"),
        ('{"converged": true}', "converged"),
        ('{"loss": null}', "loss"),
        ('{"per_class": [0.1, 0.2]}', "per_class"),
        ('{"nested": {"loss": 0.1}}', "nested"),
        ("[0.5]", "object"),
        ('"fine"', "object"),
    ],
    ids=["huge-int", "text", "boolean", "null", "list", "object", "array", "string"],
)
def test_a_metric_that_is_not_a_number_is_refused(experiment, client_api, safetensors, path, metrics, says):
    assert_refused(send(path, client_api, experiment, safetensors, metrics), says)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_numeric_metrics_are_accepted_on_every_path(experiment, client_api, safetensors, path):
    response = send(
        path, client_api, experiment, safetensors, '{"loss": 0.25, "epochs": 3, "num_examples": 9}'
    )
    assert response.status_code == 201, response.content
    stored = (UploadSession if path.startswith("upload-session") else ModelUpdate).objects.get()
    assert stored.metrics == {"loss": 0.25, "epochs": 3, "num_examples": 9}


def test_a_score_that_is_not_finite_is_refused(experiment, client_api, uploader, safetensors):
    """A client's scores of an aggregate stay free-form (the original's protocol), but finite."""
    assert uploader(client_api, experiment.pk, safetensors(1.0)).status_code == 201
    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    assert outcome.status == "committed"
    aggregate = experiment.aggregates.get().pk
    url = "/api/v1/client_aggregate_scores/"
    body = f'{{"aggregate": {aggregate}, "validation_results": {{"f1": 1{"0" * 400}}}}}'  # no float holds it
    refused = client_api.generic("POST", url, body, content_type="application/json")
    assert refused.status_code == 400, refused.content
    assert refused.json()["code"] == "invalid_metrics"
    assert "f1" in refused.json()["detail"]
    assert Evaluation.objects.count() == 0
    kept = client_api.post(
        url,
        {"aggregate": aggregate, "validation_results": {"f1": 0.5, "note": "text is kept"}},
        format="json",
    )
    assert kept.status_code == 201, kept.content
    assert kept.json()["validation_results"] == {"f1": 0.5, "note": "text is kept"}
