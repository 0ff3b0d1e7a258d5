"""fma-client's typed results: each mirrors its OpenAPI component, has typed attributes, and still
reads as the plain dict earlier versions returned (issue 22 item 4)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import requests

import fma_client
from fma_client import (
    Aggregate,
    AggregateDetail,
    ApiToken,
    Artifact,
    Client,
    Developer,
    EnrollmentToken,
    Evaluation,
    EvaluationSummary,
    Experiment,
    IssuedEnrollmentToken,
    MetricSummary,
    Result,
    RoundMetrics,
    Score,
    Update,
    ValidationError,
)
from fma_client.cli import main

TYPES = [
    Experiment,
    Update,
    Aggregate,
    AggregateDetail,
    Artifact,
    Score,
    EnrollmentToken,
    IssuedEnrollmentToken,
    ApiToken,
    MetricSummary,
    RoundMetrics,
    Evaluation,
    EvaluationSummary,
]
WEIGHTS = {"dense": np.ones((4, 3), np.float32), "bias": np.ones(3, np.float32)}


def test_every_result_type_is_exported_and_listed_here():
    exported = {v for v in vars(fma_client).values() if isinstance(v, type) and issubclass(v, Result)}
    assert exported - {Result} == set(TYPES)


def test_each_types_fields_are_its_openapi_components(server, dev_token):
    """The drift check: a field the API adds, renames or drops fails here until the type follows."""
    answer = requests.get(
        f"{server}/api/schema/", headers={"Authorization": f"Token {dev_token}", "Accept": "application/json"}
    )
    components = answer.json()["components"]["schemas"]
    for kind in TYPES:
        assert kind.declared() == list(components[kind.schema]["properties"]), kind.__name__


def test_a_result_is_a_read_only_mapping_of_what_the_server_sent():
    fields = {"id": 3, "round_number": 2, "aggregator_params": {"momentum": 0.9}, "extra": "kept"}
    aggregate = Aggregate(fields)
    assert aggregate == fields
    assert fields == aggregate
    assert dict(aggregate) == fields
    assert (aggregate["id"], aggregate.get("parent"), aggregate.get("parent", -1)) == (3, None, -1)
    assert list(aggregate) == list(fields)
    assert len(aggregate) == 4
    assert "extra" in aggregate
    assert {**aggregate} == fields
    assert aggregate != {**fields, "id": 4}
    assert (aggregate.id, aggregate.round_number) == (3, 2)
    assert pickle.loads(pickle.dumps(aggregate)) == aggregate
    assert repr(aggregate).startswith("Aggregate({'id': 3")
    with pytest.raises(TypeError):
        aggregate["id"] = 4  # type: ignore[index]
    with pytest.raises(AttributeError, match="read-only"):
        aggregate.id = 4  # type: ignore[misc]
    with pytest.raises(AttributeError, match=r"without 'parent'.*id, round_number"):
        _ = aggregate.parent
    assert not Aggregate({})
    assert Aggregate({}) == {}


def test_push_and_the_developers_methods_answer_in_types(
    server, dev_token, experiment, enrollment_token, run_round
):
    with (
        Developer(server, token=dev_token, quiet=True) as dev,
        Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client,
    ):
        assert client.latest() == {}
        assert isinstance(client.latest(), Aggregate)
        update = client.push(WEIGHTS, num_examples=7, metrics={"loss": 0.5})
        assert isinstance(update, Update)
        assert (update.num_examples, update.metrics, update.status) == (7, {"loss": 0.5}, "pending")
        assert update.client == client.uuid
        assert update.federated_model == experiment.pk

        aggregate_id = run_round(experiment.pk)
        score = client.report_scores(aggregate_id, {"accuracy": 0.75})
        assert isinstance(score, Score)
        assert score.validation_results == {"accuracy": 0.75}
        latest = client.latest()
        assert isinstance(latest, Aggregate)
        assert (latest.id, latest.round_number) == (aggregate_id, 1)

        shown = dev.experiment(experiment.pk)
        assert isinstance(shown, Experiment)
        assert shown.clients == [client.uuid]
        assert [type(e) for e in dev.experiments()] == [Experiment]
        (listed,) = dev.aggregates(experiment.pk)
        assert isinstance(listed, Aggregate)
        assert listed == latest
        detail = dev.aggregate(aggregate_id)
        assert isinstance(detail, AggregateDetail)
        assert [u["id"] for u in detail.updates] == [update.id]
        (applied,) = dev.updates(experiment.pk)
        assert isinstance(applied, Update)
        assert applied.applied_aggregate == aggregate_id
        artifact = dev.publish(aggregate_id, "1.1.0")
        assert isinstance(artifact, Artifact)
        assert (artifact.version, artifact.aggregate) == ("1.1.0", aggregate_id)
        assert [a.version for a in dev.artifacts(experiment.pk)] == ["1.1.0", "1.0.0"]
        with pytest.raises(ValidationError, match=r"'1\.0\.0' is already published"):  # the initial model's
            dev.publish(aggregate_id, "1.0.0")
        (metrics,) = dev.metrics(experiment.pk)
        assert isinstance(metrics, RoundMetrics)
        assert isinstance(metrics.training["loss"], MetricSummary)
        assert metrics.training["loss"].weighted_mean == 0.5
        assert metrics.evaluation["accuracy"].count == 1
        issued = dev.issue_enrollment_token(experiment.pk, max_uses=2)
        assert isinstance(issued, IssuedEnrollmentToken)
        assert issued.max_uses == 2
        assert issued.token
        assert all(type(t) is EnrollmentToken for t in dev.enrollment_tokens(experiment.pk))
        revoked = dev.revoke_enrollment_token(experiment.pk, issued.id)
        assert isinstance(revoked, EnrollmentToken)
        assert revoked.active is False
        assert [(type(t), t.current) for t in dev.api_tokens()] == [(ApiToken, True)]


def test_the_clis_json_is_the_servers_json(server, dev_token, experiment, capsys):
    """``--json`` prints the same JSON as before the types: the mapping, nested results included."""
    raw = requests.get(
        f"{server}/api/v1/models/{experiment.pk}/", headers={"Authorization": f"Token {dev_token}"}
    ).json()
    assert (
        main(["--url", server, "--token", dev_token, "--json", "experiments", "show", str(experiment.pk)])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == raw
