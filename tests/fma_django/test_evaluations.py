"""Evaluation on held-out data (``fma_django.evaluations``): the experiment's ``evaluation`` setting,
``models/{id}/evaluations/``, the aggregate's combined figure, and the selectors the lifecycle reads."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from fma_core.rounds import RoundEngine
from fma_django import selectors
from fma_django.models import Evaluation, Experiment
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

DECLARED = {"metrics": {"accuracy": {"goal": "max"}, "loss": {"goal": "min"}}}


def run_round(experiment: Experiment) -> int:
    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    assert outcome.status == "committed", outcome
    return int(outcome.aggregate.aggregate_id)


@pytest.fixture
def evaluated(make_experiment, enroll, uploader, safetensors):
    """An experiment declaring accuracy (max) and loss (min), two enrolled clients, one round done."""
    experiment = make_experiment(evaluation=DECLARED)
    first, second = enroll(experiment), enroll(experiment)
    assert uploader(first, experiment.pk, safetensors(1.0)).status_code == 201
    aggregate = run_round(experiment)
    return experiment, first, second, aggregate


def url(experiment: Experiment | int) -> str:
    return f"/api/v1/models/{getattr(experiment, 'pk', experiment)}/evaluations/"


def report(api, experiment, aggregate, metrics, num_examples=10):
    body = {"aggregate": aggregate, "metrics": metrics, "num_examples": num_examples}
    return api.post(url(experiment), body, format="json")


# The setting


@pytest.mark.parametrize(
    "setting",
    [
        {"metrics": {}},
        {"metrics": {"accuracy": "max"}},
        {"metrics": {"accuracy": {"goal": "up"}}},
        {"metrics": {"accuracy": {"goal": "max", "unit": "%"}}},
        {"metrics": {"num_examples": {"goal": "max"}}},
        {"metrics": {"a\nb": {"goal": "max"}}},
        {"metrics": {"x" * 65: {"goal": "max"}}},
        {"metrics": {"accuracy": {"goal": "max"}}, "target": 0.9},
        {"metrics": {"accuracy": {"goal": "max"}}, "schema": {"$ref": "https://example.org/s.json"}},
        ["accuracy"],
        "accuracy",
    ],
)
def test_a_bad_evaluation_setting_is_refused_and_nothing_is_stored(dev_api, setting):
    answer = dev_api.post("/api/v1/models/", {"name": "x", "evaluation": setting}, format="json")
    assert answer.status_code == 400, answer.content
    assert answer.json()["code"] in {"invalid_evaluation", "invalid_schema"}
    assert not Experiment.objects.exists()


def test_the_setting_is_stored_shown_and_changed_through_the_api(dev_api):
    created = dev_api.post("/api/v1/models/", {"name": "x", "evaluation": DECLARED}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["evaluation"] == DECLARED
    experiment = Experiment.objects.get()
    assert experiment.evaluation_goals == {"accuracy": "max", "loss": "min"}
    refused = dev_api.patch(
        f"/api/v1/models/{experiment.pk}/", {"evaluation": {"metrics": {}}}, format="json"
    )
    assert refused.status_code == 400
    experiment.refresh_from_db()
    assert experiment.evaluation == DECLARED
    cleared = dev_api.patch(f"/api/v1/models/{experiment.pk}/", {"evaluation": None}, format="json")
    assert cleared.json()["evaluation"] is None


# Reporting


def test_clients_and_the_developer_report_and_the_aggregate_combines_them_weighted_by_examples(
    evaluated, dev_api
):
    experiment, first, second, aggregate = evaluated
    assert report(first, experiment, aggregate, {"accuracy": 0.5, "loss": 1.0}, 10).status_code == 201
    assert report(second, experiment, aggregate, {"accuracy": 0.9}, 30).status_code == 201
    mine = report(dev_api, experiment, aggregate, {"accuracy": 0.8, "loss": 0.25}, 60)
    assert mine.status_code == 201, mine.content
    assert {k: mine.json()[k] for k in ("source", "client", "aggregate", "round_number", "num_examples")} == {
        "source": "developer",
        "client": None,
        "aggregate": aggregate,
        "round_number": 1,
        "num_examples": 60,
    }

    summary = dev_api.get(f"/api/v1/model_aggregates/{aggregate}/").json()["evaluation"]
    assert (summary["reports"], summary["examples"]) == (3, 100)
    assert summary["sources"] == {"client": 2, "developer": 1}
    assert summary["goals"] == {"accuracy": "max", "loss": "min"}
    accuracy = summary["metrics"]["accuracy"]
    # (0.5·10 + 0.9·30 + 0.8·60) / 100 = (5 + 27 + 48) / 100
    assert accuracy["weighted_mean"] == pytest.approx(0.80, abs=1e-15)
    assert accuracy["mean"] == pytest.approx((0.5 + 0.9 + 0.8) / 3, abs=1e-15)
    assert (accuracy["count"], accuracy["examples"], accuracy["min"], accuracy["max"]) == (3, 100, 0.5, 0.9)
    loss = summary["metrics"]["loss"]
    # (1.0·10 + 0.25·60) / 70: the client that did not report a loss does not weigh in it
    assert loss["weighted_mean"] == pytest.approx(25 / 70, abs=1e-15)
    assert (loss["count"], loss["examples"]) == (2, 70)

    per_round = dev_api.get(f"/api/v1/models/{experiment.pk}/metrics/").json()
    assert per_round[0]["evaluation"]["accuracy"]["weighted_mean"] == pytest.approx(0.80, abs=1e-15)

    latest = selectors.evaluation_latest(experiment, "loss")
    assert (latest.aggregate.pk, latest.goal, latest.value) == (aggregate, "min", pytest.approx(25 / 70))
    assert latest.reaches(0.36)  # lower is better
    assert not latest.reaches(0.35)
    best = selectors.evaluation_latest(experiment, "accuracy")
    assert best.reaches(0.8)
    assert not best.reaches(0.81)
    assert selectors.evaluation_latest(experiment, "f1") is None


def test_the_latest_value_is_the_newest_evaluated_round_s(evaluated, dev_api, uploader, safetensors):
    experiment, first, _, aggregate = evaluated
    assert selectors.evaluation_latest(experiment, "accuracy") is None
    report(dev_api, experiment, aggregate, {"accuracy": 0.6}, 450)
    assert uploader(first, experiment.pk, safetensors(2.0)).status_code == 201
    newer = run_round(experiment)
    assert selectors.evaluation_latest(experiment, "accuracy").aggregate.pk == aggregate  # not yet evaluated
    report(dev_api, experiment, newer, {"accuracy": 0.7}, 450)
    latest = selectors.evaluation_latest(experiment, "accuracy")
    assert (latest.aggregate.round_number, latest.value, latest.summary.count) == (2, 0.7, 1)


def test_a_retry_counts_once_and_a_different_report_is_a_conflict(evaluated, dev_api):
    experiment, first, _, aggregate = evaluated
    created = report(first, experiment, aggregate, {"accuracy": 0.5}, 10)
    retried = report(first, experiment, aggregate, {"accuracy": 0.5}, 10)
    assert (created.status_code, retried.status_code) == (201, 200)
    assert retried.json() == created.json()
    for changed in ({"accuracy": 0.6}, {"accuracy": 0.5, "loss": 1.0}):
        refused = report(first, experiment, aggregate, changed, 10)
        assert (refused.status_code, refused.json()["code"]) == (409, "evaluation_exists")
    other_weight = report(first, experiment, aggregate, {"accuracy": 0.5}, 11)
    assert other_weight.status_code == 409
    assert report(dev_api, experiment, aggregate, {"accuracy": 0.7}, 5).status_code == 201
    assert report(dev_api, experiment, aggregate, {"accuracy": 0.7}, 5).status_code == 200
    assert report(dev_api, experiment, aggregate, {"accuracy": 0.8}, 5).status_code == 409
    assert Evaluation.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"metrics": {"f1": 0.5}}, "undeclared_metric"),
        ({"metrics": {"accuracy": "0.5"}}, "invalid_metrics"),
        ({"metrics": {"accuracy": True}}, "invalid_metrics"),
        ({"metrics": {"accuracy": None}}, "invalid_metrics"),
        ({"metrics": {"accuracy": [0.5]}}, "invalid_metrics"),
        ({"metrics": {}}, "invalid_metrics"),
        ({"metrics": [0.5]}, "invalid_metrics"),
        ({"metrics": "accuracy"}, "invalid_metrics"),
        ({"num_examples": 0}, "invalid"),
        ({"num_examples": -3}, "invalid"),
        ({"num_examples": 1.5}, "invalid"),
        ({"num_examples": True}, "invalid"),
        ({"num_examples": 2**63}, "invalid"),
        ({"num_examples": None}, "invalid"),
        ({"aggregate": "latest"}, "invalid"),
        ({"aggregate": 10**6}, "invalid_aggregate"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(evaluated, dev_api, body, code):
    experiment, first, _, aggregate = evaluated
    for api in (first, dev_api):
        sent = {"aggregate": aggregate, "metrics": {"accuracy": 0.5}, "num_examples": 10, **body}
        answer = api.post(url(experiment), sent, format="json")
        assert (answer.status_code, answer.json()["code"]) == (400, code), answer.content
    assert not Evaluation.objects.exists()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_numbers_that_are_not_finite_are_refused(evaluated, number):
    experiment, first, _, aggregate = evaluated
    raw = f'{{"aggregate": {aggregate}, "metrics": {{"accuracy": {number}}}, "num_examples": 3}}'
    answer = first.generic("POST", url(experiment), raw, content_type="application/json")
    assert answer.status_code == 400, answer.content
    assert not Evaluation.objects.exists()


def test_an_aggregate_of_another_experiment_or_tenant_is_refused(
    evaluated, make_experiment, other_developer, enroll, uploader, safetensors, dev_api
):
    experiment, first, _, _ = evaluated
    mine_too = make_experiment(evaluation=DECLARED)
    assert uploader(enroll(mine_too), mine_too.pk, safetensors(1.0)).status_code == 201
    sibling = run_round(mine_too)
    theirs = make_experiment(owner=other_developer, evaluation=DECLARED)
    assert uploader(enroll(theirs), theirs.pk, safetensors(1.0)).status_code == 201
    foreign = run_round(theirs)
    for api in (first, dev_api):
        for aggregate in (sibling, foreign):
            answer = report(api, experiment, aggregate, {"accuracy": 0.5})
            assert (answer.status_code, answer.json()["code"]) == (400, "invalid_aggregate")
            assert answer.json()["detail"] == (
                f"aggregate {aggregate} is not an aggregate of experiment {experiment.pk}"
            )  # the same words whether or not it exists elsewhere
    assert report(dev_api, theirs, foreign, {"accuracy": 0.5}).status_code == 404  # not her experiment
    assert not Evaluation.objects.exists()


def test_an_experiment_without_declared_metrics_takes_no_evaluation(
    make_experiment, enroll, uploader, safetensors
):
    experiment = make_experiment()
    client = enroll(experiment)
    assert uploader(client, experiment.pk, safetensors(1.0)).status_code == 201
    answer = report(client, experiment, run_round(experiment), {"accuracy": 0.5})
    assert (answer.status_code, answer.json()["code"]) == (400, "evaluation_not_declared")
    assert not Evaluation.objects.exists()


def test_the_declared_schema_is_applied(make_experiment, enroll, uploader, safetensors):
    schema = {"type": "object", "properties": {"accuracy": {"minimum": 0, "maximum": 1}}}
    experiment = make_experiment(evaluation={**DECLARED, "schema": schema})
    client = enroll(experiment)
    assert uploader(client, experiment.pk, safetensors(1.0)).status_code == 201
    aggregate = run_round(experiment)
    refused = report(client, experiment, aggregate, {"accuracy": 91.0})
    assert (refused.status_code, refused.json()["code"]) == (400, "schema_mismatch")
    assert report(client, experiment, aggregate, {"accuracy": 0.91}).status_code == 201


def test_a_client_sees_its_own_and_the_developer_sees_all_with_filters(
    evaluated, dev_api, uploader, safetensors
):
    experiment, first, second, aggregate = evaluated
    a = report(first, experiment, aggregate, {"accuracy": 0.5}).json()["id"]
    b = report(second, experiment, aggregate, {"accuracy": 0.6}).json()["id"]
    c = report(dev_api, experiment, aggregate, {"accuracy": 0.7}).json()["id"]

    def ids(api, query=""):
        answer = api.get(url(experiment) + query)
        assert answer.status_code == 200, answer.content
        return [row["id"] for row in answer.json()["results"]]

    assert ids(dev_api) == [c, b, a]
    assert ids(first) == [a]
    assert ids(dev_api, "?source=developer") == [c]
    assert ids(dev_api, f"?after={a}") == [c, b]
    assert ids(dev_api, f"?aggregate={aggregate + 1}") == []
    assert dev_api.get(url(experiment) + "?source=robot").status_code == 400
    # the v1 list holds clients' evaluations only, each as results (its metrics and examples)
    v1 = dev_api.get("/api/v1/client_aggregate_scores/").json()["results"]
    assert {row["id"]: row["validation_results"] for row in v1} == {
        a: {"accuracy": 0.5, "num_examples": 10},
        b: {"accuracy": 0.6, "num_examples": 10},
    }


def test_a_v1_score_is_a_client_evaluation_held_to_the_declared_metrics(evaluated, dev_api):
    experiment, first, second, aggregate = evaluated
    scores = "/api/v1/client_aggregate_scores/"
    undeclared = first.post(
        scores, {"aggregate": aggregate, "validation_results": {"f1": 0.5}}, format="json"
    )
    assert (undeclared.status_code, undeclared.json()["code"]) == (400, "undeclared_metric")
    results = {"accuracy": 0.5, "num_examples": 30, "note": "text is kept, not combined"}
    kept = first.post(scores, {"aggregate": aggregate, "validation_results": results}, format="json")
    assert kept.status_code == 201
    assert kept.json()["validation_results"] == results
    changed = first.post(
        scores, {"aggregate": aggregate, "validation_results": {"accuracy": 0.6}}, format="json"
    )
    assert (changed.status_code, changed.json()["code"]) == (400, "duplicate_score")  # the v1 answer
    assert report(second, experiment, aggregate, {"accuracy": 0.9}, 10).status_code == 201
    summary = dev_api.get(f"/api/v1/model_aggregates/{aggregate}/").json()["evaluation"]
    assert summary["metrics"]["accuracy"]["weighted_mean"] == pytest.approx((0.5 * 30 + 0.9 * 10) / 40)
    assert Evaluation.objects.get(pk=kept.json()["id"]).metrics == {"accuracy": 0.5}


def test_reports_at_once_store_one_evaluation(require_postgresql, transactional_db, live_server, evaluated):
    """On PostgreSQL, the same client sending its report eight times at once (retries racing) and,
    then, eight different reports at once: one row each time; the twins get it, the others a 409."""
    experiment, first, _, aggregate = evaluated
    token = first._credentials["HTTP_AUTHORIZATION"]

    def send(value: float) -> requests.Response:
        body = {"aggregate": aggregate, "metrics": {"accuracy": value}, "num_examples": 5}
        return requests.post(
            live_server.url + url(experiment), json=body, headers={"Authorization": token}, timeout=60
        )

    with ThreadPoolExecutor(8) as pool:
        same = list(pool.map(send, [0.5] * 8))
    assert sorted(r.status_code for r in same) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in same}) == 1
    Evaluation.objects.all().delete()
    with ThreadPoolExecutor(8) as pool:
        different = list(pool.map(send, [i / 10 for i in range(8)]))
    assert sorted(r.status_code for r in different) == [201] + [409] * 7
    assert Evaluation.objects.count() == 1
    assert connection.vendor == "postgresql"
    assert json.loads(json.dumps(Evaluation.objects.get().metrics))["accuracy"] in {i / 10 for i in range(8)}


MIGRATION = ("fma_django", "0018_evaluation")


@pytest.mark.django_db(transaction=True)
def test_the_migration_makes_each_score_a_client_evaluation_with_the_figures_it_was_combined_with():
    executor = MigrationExecutor(connection)
    before = [
        node for node in executor.loader.get_migration(*MIGRATION).dependencies if node[0] == "fma_django"
    ]
    leaves = executor.loader.graph.leaf_nodes()
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        user = old.get_model("auth", "User").objects.create(username="alice")
        experiment = old.get_model("fma_django", "Experiment").objects.create(developer=user, name="x")
        aggregate = old.get_model("fma_django", "ModelAggregate").objects.create(
            experiment=experiment, round_number=1, weights_key="k", content_id="c" * 64, size_bytes=1,
            aggregator="fedavg", duration_seconds=0.0,
        )  # fmt: skip
        clients = old.get_model("fma_django", "Client")
        score = old.get_model("fma_django", "ClientAggregateScore")
        results = [
            {"accuracy": 0.5, "num_examples": 7, "note": "text", "flag": True},
            {"f1": [0.5, 0.7], "num_examples": 0},
            [1, 2],
        ]
        for value in results:
            score.objects.create(
                aggregate=aggregate, client=clients.objects.create(), validation_results=value
            )

        executor = MigrationExecutor(connection)
        executor.migrate([MIGRATION])

        new = executor.loader.project_state([MIGRATION]).apps.get_model("fma_django", "Evaluation")
        assert list(
            new.objects.order_by("pk").values_list("source", "metrics", "num_examples", "validation_results")
        ) == [
            ("client", {"accuracy": 0.5}, 7, results[0]),
            ("client", {}, 1, results[1]),
            ("client", {}, 1, results[2]),
        ]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(leaves)
