"""``Developer.metrics``: the server's per-aggregate combination of clients' metrics, over real HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from fma_client import Client, Developer, NotFound
from fma_client.cli import main


def test_metrics_combine_each_rounds_updates_and_scores_weighted_by_examples(
    server, developer, dev_token, enrollment_token, experiment, run_round, django_user_model
):
    weights = {"dense": np.ones((4, 3), np.float32), "bias": np.ones(3, np.float32)}
    with (
        Developer(server, token=dev_token, quiet=True) as dev,
        Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as small,
        Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as large,
    ):
        small.push(weights, num_examples=1, metrics={"loss": 0.8})
        large.push(weights, num_examples=3, metrics={"loss": 0.4})
        aggregate = run_round(experiment.pk)
        small.report_scores(aggregate, {"accuracy": 0.5, "num_examples": 10})
        large.report_scores(aggregate, {"accuracy": 0.9, "num_examples": 30})

        (item,) = dev.metrics(experiment.pk)
        assert (item["aggregate"], item["round_number"]) == (aggregate, 1)
        assert item["training"]["loss"] == {
            "count": 2,
            "examples": 4,
            "mean": pytest.approx(0.6, abs=1e-15),
            "weighted_mean": pytest.approx(0.5, abs=1e-15),  # (0.8·1 + 0.4·3) / 4
            "min": 0.4,
            "max": 0.8,
        }
        assert item["evaluation"]["accuracy"]["weighted_mean"] == pytest.approx(0.8, abs=1e-15)

    django_user_model.objects.create_user("other", password="other-password")
    with Developer.login(server, "other", "other-password", quiet=True) as other, pytest.raises(NotFound):
        other.metrics(experiment.pk)


def test_fma_metrics_prints_a_row_per_round_source_and_metric(
    server, developer, dev_token, enrollment_token, experiment, run_round, monkeypatch, capsys
):
    monkeypatch.setenv("FMA_URL", server)
    monkeypatch.setenv("FMA_TOKEN", dev_token)
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        client.push({"dense": np.ones((4, 3), np.float32), "bias": np.ones(3, np.float32)}, 2, {"loss": 0.25})
        aggregate = run_round(experiment.pk)
        client.report_scores(aggregate, {"accuracy": 1 / 3})
    assert main(["metrics", str(experiment.pk)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ROUND", "SOURCE", "METRIC", "COUNT", "EXAMPLES", "WEIGHTED_MEAN", "MEAN", "MIN", "MAX"
    ]  # fmt: skip
    assert lines[1].split() == ["1", "evaluation", "accuracy", "1", "1", *["0.333333"] * 4]
    assert lines[2].split() == ["1", "training", "loss", "1", "2", *["0.25"] * 4]
