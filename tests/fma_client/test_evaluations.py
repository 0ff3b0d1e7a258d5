"""Evaluation on held-out data through fma-client and the ``fma`` CLI, against a live service."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from fma_client import Client, ConflictError, Developer, Evaluation, EvaluationSummary, FmaClientError
from fma_django import services

WEIGHTS = {"dense": np.ones((4, 3), np.float32), "bias": np.ones(3, np.float32)}
DECLARED = {"metrics": {"accuracy": {"goal": "max"}, "loss": {"goal": "min"}}}


@pytest.fixture
def declared(experiment):
    services.experiment_update(experiment=experiment, user=experiment.developer, evaluation=DECLARED)
    return experiment


def test_clients_and_the_developer_report_and_read_the_combined_figure(
    server, dev_token, declared, enrollment_token, run_round
):
    with (
        Developer(server, token=dev_token, quiet=True) as dev,
        Client.enroll(server, declared.pk, enrollment_token=enrollment_token, quiet=True) as alice,
        Client.enroll(server, declared.pk, enrollment_token=enrollment_token, quiet=True) as bob,
    ):
        alice.pull()
        with pytest.raises(FmaClientError, match="pull\\(\\) an aggregate first"):
            alice.report_evaluation({"accuracy": 0.5}, 10)  # the initial model is no aggregate
        alice.push(WEIGHTS, num_examples=4)
        aggregate = run_round(declared.pk)
        _, pulled = alice.wait_for_new_model(timeout=30, poll_interval=0.1)
        assert pulled == aggregate

        mine = alice.report_evaluation({"accuracy": np.float32(0.5), "loss": 1.0}, np.int64(10))
        assert isinstance(mine, Evaluation)
        assert (mine.aggregate, mine.source, mine.client, mine.num_examples) == (
            aggregate,
            "client",
            alice.uuid,
            10,
        )
        assert alice.report_evaluation({"accuracy": 0.5, "loss": 1.0}, 10) == mine  # a retry: the same one
        with pytest.raises(ConflictError, match="cannot change"):
            alice.report_evaluation({"accuracy": 0.6, "loss": 1.0}, 10)
        bob.report_evaluation({"accuracy": 0.9}, 30, aggregate=aggregate)
        evaluator = dev.report_evaluation(declared.pk, aggregate, {"accuracy": 0.8, "loss": 0.25}, 60)
        assert (evaluator.source, evaluator.client, evaluator.round_number) == ("developer", None, 1)

        detail = dev.aggregate(aggregate)
        summary = detail.evaluation
        assert isinstance(summary, EvaluationSummary)
        assert (summary.reports, summary.examples, summary.sources) == (3, 100, {"client": 2, "developer": 1})
        assert summary.metrics["accuracy"].weighted_mean == pytest.approx(0.8, abs=1e-15)
        assert summary.metrics["loss"].weighted_mean == pytest.approx(25 / 70, abs=1e-15)
        assert summary.goals == {"accuracy": "max", "loss": "min"}

        assert [e.source for e in dev.evaluations(declared.pk)] == ["developer", "client", "client"]
        assert [e.id for e in dev.evaluations(declared.pk, source="developer")] == [evaluator.id]
        assert [e.id for e in dev.evaluations(declared.pk, after=mine.id)][-1] != mine.id
        own = requests.get(
            f"{server}/api/v1/models/{declared.pk}/evaluations/",
            headers={"Authorization": f"Client {alice.token}"},
        )
        assert [e["id"] for e in own.json()["results"]] == [mine.id]  # a client sees only its own
        (item,) = dev.metrics(declared.pk)
        assert item.evaluation["accuracy"].weighted_mean == pytest.approx(0.8, abs=1e-15)


def test_fma_evaluate_reports_and_prints_the_combined_figure(
    server, dev_token, declared, enrollment_token, run_round, fma
):
    with Client.enroll(server, declared.pk, enrollment_token=enrollment_token, quiet=True) as client:
        client.push(WEIGHTS, num_examples=2)
        aggregate = run_round(declared.pk)
        client.report_evaluation({"accuracy": 0.5}, 150, aggregate=aggregate)
    login = ("--url", server, "--token", dev_token)
    status, out, err = fma(
        *login, "evaluate", declared.pk, aggregate, "--metric", "accuracy=0.9", "--metric", "loss=0.3",
        "--examples", "450",
    )  # fmt: skip
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Evaluation ")
    assert f"of aggregate {aggregate} (round 1) recorded." in lines[0]
    assert "2 report(s) (1 by client, 1 by developer) on 600 examples" in out
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("accuracy", "loss"))}
    assert rows["accuracy"][:5] == ["accuracy", "max", "0.8", "2", "600"]  # (0.5·150 + 0.9·450) / 600
    assert rows["loss"][:5] == ["loss", "min", "0.3", "1", "450"]

    again = fma(*login, "evaluate", declared.pk, aggregate, "--metric", "accuracy=0.8", "--examples", "450")
    assert again[0] == 1
    assert "HTTP 409" in again[2]

    status, out, _ = fma(*login, "aggregate", aggregate)
    assert status == 0
    assert "Evaluation on held-out data: 2 report(s)" in out
    status, out, _ = fma(*login, "--json", "evaluations", declared.pk, "--source", "developer")
    (listed,) = json.loads(out)
    assert (listed["metrics"], listed["num_examples"]) == ({"accuracy": 0.9, "loss": 0.3}, 450)
    status, out, _ = fma(*login, "evaluations", declared.pk)
    assert out.splitlines()[0].split()[:4] == ["ID", "ROUND_NUMBER", "AGGREGATE", "SOURCE"]
    assert "accuracy=0.9, loss=0.3" in out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--metric", "accuracy"], "write NAME=VALUE"),
        (["--metric", "accuracy=high"], "'high' is not a number"),
        (["--metric", "accuracy=0.5", "--metric", "accuracy=0.6"], "given twice"),
    ],
)
def test_fma_evaluate_refuses_a_malformed_metric_before_asking(server, dev_token, fma, options, message):
    status, _, err = fma(
        "--url", server, "--token", dev_token, "evaluate", "1", "1", *options, "--examples", "3"
    )
    assert status == 2
    assert message in err


def test_an_undeclared_metric_is_refused_with_the_services_reason(
    server, dev_token, declared, enrollment_token, run_round, fma
):
    with Client.enroll(server, declared.pk, enrollment_token=enrollment_token, quiet=True) as client:
        client.push(WEIGHTS, num_examples=2)
        aggregate = run_round(declared.pk)
    status, _, err = fma(
        "--url", server, "--token", dev_token, "evaluate", declared.pk, aggregate, "--metric", "f1=0.5",
        "--examples", "3",
    )  # fmt: skip
    assert status == 1
    assert "'f1' is not a metric" in err
