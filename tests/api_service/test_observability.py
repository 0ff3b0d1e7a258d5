"""Health, readiness and metrics of the real fma-server (issue 20, items 1 and 2): the probes answer
without credentials; ``/metrics`` only to a scraper with the token; after a real round through the
service, the metrics say what happened, with an experiment label only where the operator opted in."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fma_client import Client, Developer, ValidationError

from .conftest import Served, free_port

TOKEN = "a-metrics-token-for-the-tests"
SHAPES = {"w": (4, 3), "b": (3,)}
ADDRESS = f"127.0.0.1:{free_port()}"  # the metrics' separate address (FMA_METRICS_ADDRESS)


def scrape(url: str, *, token: str | None = TOKEN) -> dict[tuple[str, frozenset], float]:
    """Every sample of one scrape, by name and labels."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = requests.get(url + "/metrics", headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def service(serve_for_module) -> Served:
    """Two worker processes (multiprocess metrics), the in-process runner, experiment 1 opted in to a
    label, and the metrics also on a separate address."""
    return serve_for_module(
        FMA_DEVELOPMENT="1",
        FMA_METRICS_TOKEN=TOKEN,
        FMA_METRICS_ADDRESS=ADDRESS,
        FMA_METRICS_EXPERIMENTS="1",
        FMA_WORKERS="2",
        FMA_AGGREGATOR_RUNNER="inprocess",
    )


def test_the_probes_answer_without_credentials(service):
    assert requests.get(service.url + "/healthz", timeout=60).json() == {"status": "ok"}
    ready = requests.get(service.url + "/readyz", timeout=60)
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "weight_store": "ok"},
    }


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-the-token", f"Token {TOKEN}", f"Bearer {TOKEN}x", "Bearer"],
    ids=["none", "wrong", "other-scheme", "longer", "empty"],
)
def test_the_metrics_endpoint_refuses_a_scraper_without_the_token(service, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    refused = requests.get(service.url + "/metrics", headers=headers, timeout=60)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert "FMA_METRICS_TOKEN" in refused.json()["detail"]
    assert "fma_" not in refused.text


def test_without_a_token_setting_there_is_no_metrics_endpoint(serve):
    served = serve(FMA_DEVELOPMENT="1", FMA_WORKERS="1", FMA_AGGREGATOR_RUNNER="none")
    answer = requests.get(served.url + "/metrics", headers={"Authorization": "Bearer "}, timeout=60)
    assert answer.status_code == 404


def _developer(service: Served) -> Developer:
    service.create_superuser("operator", "a-password-for-tests")
    return Developer.login(service.url, "operator", "a-password-for-tests", quiet=True)


def _weights(value: float, shapes: dict = SHAPES) -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, dtype=np.float32) for name, shape in shapes.items()}


def _enrolled(developer: Developer, service: Served, experiment_id: int) -> Client:
    token = developer.issue_enrollment_token(experiment_id, max_uses=1)["token"]
    return Client.enroll(service.url, experiment_id, enrollment_token=token, quiet=True)


def test_metrics_count_a_real_round_its_updates_and_a_refusal(service, tmp_path):
    developer = _developer(service)
    definition = {
        "aggregator": "fedavg",
        "round_policy": {"policy": "all_clients"},
        "tensor_spec": [
            {"name": name, "dtype": "F32", "shape": list(shape)} for name, shape in SHAPES.items()
        ],
    }
    labelled = developer.create_experiment({"name": "labelled", **definition})["id"]
    assert labelled == 1  # the fresh service's first experiment: the one FMA_METRICS_EXPERIMENTS names
    unlabelled = developer.create_experiment({"name": "unlabelled", **definition})["id"]
    first, second = (_enrolled(developer, service, labelled) for _ in range(2))
    with pytest.raises(ValidationError):
        first.push(_weights(1.0, {"w": (4, 4), "b": (3,)}), num_examples=5)  # the wrong shape: refused
    first.push(_weights(1.0), num_examples=10)
    second.push(_weights(3.0), num_examples=30)
    weights, aggregate = first.wait_for_new_model(timeout=120)
    assert aggregate is not None
    np.testing.assert_allclose(weights["w"], 2.5)
    other = _enrolled(developer, service, unlabelled)
    _enrolled(developer, service, unlabelled)  # a second client enrolled: one push does not make the round
    other.push(_weights(2.0), num_examples=1)

    samples = scrape(service.url)
    label = {"experiment": "1"}
    assert value(samples, "fma_rounds_total", outcome="completed", **label) == 1
    assert value(samples, "fma_rounds_total", outcome="failed", **label) == 0
    assert value(samples, "fma_round_duration_seconds_count", outcome="completed", **label) == 1
    assert value(samples, "fma_round_aggregate_bytes_count", **label) == 1
    assert value(samples, "fma_round_aggregate_bytes_sum", **label) > 12 * 4
    assert value(samples, "fma_updates_total", outcome="accepted", reason="", **label) == 2
    assert value(samples, "fma_updates_total", outcome="rejected", reason="invalid_weights", **label) == 1
    assert value(samples, "fma_update_accepted_bytes_total", **label) > 2 * 15 * 4
    # every other experiment is counted without a label of its own
    assert value(samples, "fma_updates_total", outcome="accepted", reason="", experiment="") == 1
    assert not any(("experiment", str(unlabelled)) in labels for _, labels in samples)
    # what waits, from the database: the unlabelled experiment's round
    assert value(samples, "fma_rounds_pending") == 1
    assert value(samples, "fma_updates_pending") == 1
    assert value(samples, "fma_upload_sessions", state="open") == 0
    # the requests themselves (django-prometheus), by view
    assert (
        value(
            samples,
            "django_http_responses_total_by_status_view_method_total",
            method="POST",
            status="201",
            view="fma-api:model-upload-update",  # small updates go in one request (fma_client.single)
        )
        >= 3
    )


def test_an_open_upload_session_is_counted_until_it_completes(service):
    developer = Developer.login(service.url, "operator", "a-password-for-tests", quiet=True)
    experiment = developer.create_experiment({"name": "uploads", "aggregator": "fedavg"})["id"]
    client = _enrolled(developer, service, experiment)
    before = value(scrape(service.url), "fma_upload_sessions", state="open")
    body = {"num_examples": 1, "size": 1000, "sha256": "0" * 64}
    started = requests.post(
        f"{service.url}/api/v1/models/{experiment}/uploads/",
        json=body,
        headers={"Authorization": f"Client {client.token}"},
        timeout=60,
    )
    assert started.status_code == 201, started.text
    assert value(scrape(service.url), "fma_upload_sessions", state="open") == before + 1
    deleted = requests.delete(
        f"{service.url}/api/v1/models/{experiment}/uploads/{started.json()['id']}/",
        headers={"Authorization": f"Client {client.token}"},
        timeout=60,
    )
    assert deleted.status_code in {200, 204}
    assert value(scrape(service.url), "fma_upload_sessions", state="open") == before


def test_the_separate_address_serves_the_same_figures_without_a_token(service):
    """fma-server's main process sums its workers' files on FMA_METRICS_ADDRESS (an address of the
    monitoring network's), the database's gauges included."""
    separate = scrape(f"http://{ADDRESS}", token=None)
    endpoint = scrape(service.url)
    for name, labels in [
        ("fma_updates_total", {"outcome": "accepted", "reason": "", "experiment": "1"}),
        ("fma_rounds_total", {"outcome": "completed", "experiment": "1"}),
        ("fma_rounds_pending", {}),
    ]:
        assert value(separate, name, **labels) == value(endpoint, name, **labels) > 0
