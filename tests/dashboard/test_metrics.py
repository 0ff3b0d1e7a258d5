"""Server-side aggregation of the clients' reported metrics: the arithmetic, and the API that serves it."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from fma_django import evaluations, selectors, services
from fma_django.selectors import metric_summarize, metrics_combine


def test_a_summary_weights_each_value_by_its_examples():
    summary = metric_summarize([(0.5, 1), (0.75, 3)])
    assert summary.count == 2
    assert summary.examples == 4
    assert summary.mean == 0.625
    assert summary.weighted_mean == 0.6875  # (0.5·1 + 0.75·3) / 4
    assert (summary.min, summary.max) == (0.5, 0.75)


def test_only_finite_numbers_count_and_num_examples_is_a_weight_not_a_metric():
    combined = metrics_combine(
        [
            ({"loss": 2.0, "note": "fine", "flag": True, "num_examples": 9}, 1),
            ({"loss": float("nan"), "accuracy": 0.5}, 3),
            ([1, 2], 5),
            (None, 2),
        ]
    )
    assert list(combined) == ["accuracy", "loss"]
    assert combined["loss"].count == 1
    assert combined["loss"].weighted_mean == 2.0
    assert combined["accuracy"].as_dict() == {
        "count": 1,
        "examples": 3,
        "mean": 0.5,
        "weighted_mean": 0.5,
        "min": 0.5,
        "max": 0.5,
    }


@pytest.fixture
def two_rounds(alice, make_experiment, enroll, submit, run_round):
    """Round 1 from three clients (10, 30 and 60 examples), each scoring it; round 2 from one client."""
    experiment = make_experiment(alice, "mnist")
    clients = [enroll(experiment) for _ in range(3)]
    for client, value, examples, loss in zip(
        clients, (1.0, 2.0, 3.0), (10, 30, 60), (0.9, 0.6, 0.3), strict=True
    ):
        submit(experiment, client, value, num_examples=examples, metrics={"loss": loss})
    first = run_round(experiment)
    for client, accuracy, examples in zip(clients, (0.5, 0.7, 0.9), (100, 300, 600), strict=True):
        evaluations.score_submit(
            aggregate=first,
            client=client,
            validation_results={"accuracy": accuracy, "num_examples": examples},
        )
    submit(experiment, clients[0], 4.0, num_examples=5, metrics={"loss": 0.25}, base_aggregate_id=first.pk)
    second = run_round(experiment)
    return experiment, first, second


def test_each_aggregate_gets_its_rounds_training_metrics_and_its_own_scores_combined(two_rounds):
    experiment, first, second = two_rounds
    combined = selectors.aggregate_metrics(experiment)
    assert [item.aggregate.pk for item in combined] == [first.pk, second.pk]
    loss = combined[0].training["loss"]
    assert loss.count == 3
    assert loss.examples == 100
    assert loss.mean == pytest.approx(0.6, abs=1e-15)
    assert loss.weighted_mean == pytest.approx((0.9 * 10 + 0.6 * 30 + 0.3 * 60) / 100, abs=1e-15)  # 0.45
    assert (loss.min, loss.max) == (0.3, 0.9)
    accuracy = combined[0].evaluation["accuracy"]
    assert accuracy.count == 3
    assert accuracy.examples == 1000
    assert accuracy.weighted_mean == pytest.approx((0.5 * 100 + 0.7 * 300 + 0.9 * 600) / 1000, abs=1e-15)
    assert accuracy.mean == pytest.approx(0.7, abs=1e-15)
    assert combined[1].training["loss"].as_dict() == {
        "count": 1,
        "examples": 5,
        "mean": 0.25,
        "weighted_mean": 0.25,
        "min": 0.25,
        "max": 0.25,
    }
    assert combined[1].evaluation == {}


def test_the_metrics_endpoint_returns_every_aggregate_oldest_first(two_rounds, alice):
    experiment, first, second = two_rounds
    api = APIClient()
    api.force_authenticate(alice)
    answer = api.get(f"/api/v1/models/{experiment.pk}/metrics/")
    assert answer.status_code == 200
    body = answer.json()
    assert [(a["aggregate"], a["round_number"]) for a in body] == [(first.pk, 1), (second.pk, 2)]
    assert body[0]["training"]["loss"]["weighted_mean"] == pytest.approx(0.45, abs=1e-15)
    assert body[0]["evaluation"]["accuracy"] == {
        "count": 3,
        "examples": 1000,
        "mean": pytest.approx(0.7, abs=1e-15),
        "weighted_mean": pytest.approx(0.8, abs=1e-15),  # (0.5·100 + 0.7·300 + 0.9·600) / 1000
        "min": 0.5,
        "max": 0.9,
    }
    assert body[1]["evaluation"] == {}


def test_another_developer_gets_404_and_clients_or_anonymous_callers_are_refused(two_rounds, bob):
    experiment, *_ = two_rounds
    url = f"/api/v1/models/{experiment.pk}/metrics/"
    other = APIClient()
    other.force_authenticate(bob)
    assert other.get(url).status_code == 404
    assert APIClient().get(url).status_code in (401, 403)
    _, credential = services.client_register(experiment=experiment)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Client {credential}")
    assert client.get(url).status_code == 403


def test_staff_sees_any_experiments_metrics(two_rounds, django_user_model):
    experiment, *_ = two_rounds
    api = APIClient()
    api.force_authenticate(django_user_model.objects.create_user("ops", password="x", is_staff=True))
    assert len(api.get(f"/api/v1/models/{experiment.pk}/metrics/").json()) == 2
