"""FMA's figures on AWS Lambda (issue 20, item 2): the handler's rounds, fed real event payloads,
print CloudWatch embedded-metric-format lines, and the scheduled readiness check reports ``Ready``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from aggregator_support import submit

from fma_aggregator import emf
from fma_aggregator.lambda_handler import handler
from fma_django import telemetry

from .test_lambda import LambdaContext

NAMESPACE = "FMA/test-deployment"


@pytest.fixture
def emf_lines(settings, capsys) -> Iterator[callable]:
    """The Lambda's recorder installed (as ``FMA_METRICS=emf`` does); returns the EMF documents printed."""
    settings.FMA_METRICS_NAMESPACE = NAMESPACE
    telemetry.add_recorder(emf.record)
    capsys.readouterr()

    def printed() -> list[dict]:
        lines = capsys.readouterr().out.splitlines()
        return [json.loads(line) for line in lines if line.startswith('{"_aws"')]

    yield printed
    telemetry.remove_recorder(emf.record)


def metrics_of(document: dict) -> dict[str, tuple[float, str]]:
    """The metrics a document declares, with their values at its root, checked against the format."""
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE
    assert isinstance(document["_aws"]["Timestamp"], int)
    for dimension_set in directive["Dimensions"]:
        assert all(isinstance(document[name], str) for name in dimension_set)
    return {m["Name"]: (document[m["Name"]], m["Unit"]) for m in directive["Metrics"]}


def test_a_committed_round_prints_its_count_duration_and_bytes(emf_lines, make_experiment):
    experiment = make_experiment()
    submit(experiment, 1.0)
    submit(experiment, 3.0)
    accepted = [metrics_of(d) for d in emf_lines()]
    assert [m["UpdatesAccepted"] for m in accepted] == [(1, "Count"), (1, "Count")]
    assert all(m["UpdateBytes"][0] > 0 for m in accepted)

    result = handler({"fma": "round_ready", "experiment_id": str(experiment.pk)}, LambdaContext())
    assert result["status"] == "committed"
    [document] = emf_lines()
    metrics = metrics_of(document)
    assert metrics["RoundsCompleted"] == (1, "Count")
    assert metrics["RoundDuration"][1] == "Seconds"
    assert metrics["RoundDuration"][0] >= 0
    assert metrics["AggregateBytes"][1] == "Bytes"
    assert metrics["AggregateBytes"][0] > 0
    # a repeated delivery of the same event runs nothing, so counts nothing
    assert (
        handler({"fma": "round_ready", "experiment_id": str(experiment.pk)}, LambdaContext())["status"]
        == "idle"
    )
    assert emf_lines() == []


def test_a_failed_round_prints_rounds_failed_the_metric_the_alarm_watches(emf_lines, make_experiment):
    experiment = make_experiment(aggregator="trimmed_mean", aggregator_params={"trim_fraction": 0.45})
    submit(experiment, 1.0)
    type(experiment).objects.filter(pk=experiment.pk).update(aggregator_params={"trim_fraction": 0.9})
    emf_lines()
    assert (
        handler({"fma": "round_ready", "experiment_id": str(experiment.pk)}, LambdaContext())["status"]
        == "failed"
    )
    [document] = emf_lines()
    metrics = metrics_of(document)
    assert metrics["RoundsFailed"] == (1, "Count")
    assert metrics["FailedRoundDuration"][1] == "Seconds"
    assert document["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        []
    ]  # the alarm's metric has no dimension


def test_a_refused_update_prints_its_reason_as_a_dimension(emf_lines, make_experiment):
    from fma_django.errors import WeightsInvalid

    experiment = make_experiment()
    with pytest.raises(WeightsInvalid):
        submit(experiment, 1.0, shapes={"w": (9,)})
    [document] = emf_lines()
    assert metrics_of(document) == {"UpdatesRejected": (1, "Count")}
    assert document["Reason"] == "invalid_weights"
    assert document["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[], ["Reason"]]


def test_the_scheduled_readiness_check_reports_ready(settings, capsys, transactional_db):
    settings.FMA_METRICS_NAMESPACE = NAMESPACE
    result = handler({"fma": "readiness"}, LambdaContext())
    assert result == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "weight_store": "ok"},
    }
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert metrics_of(json.loads(line)) == {"Ready": (1, "Count")}
