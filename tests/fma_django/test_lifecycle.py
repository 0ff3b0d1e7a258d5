"""An experiment's lifecycle (fma_django.lifecycle): who moves it, what each state allows, and the v1 switch."""

from __future__ import annotations

import json

import pytest
from django.db import IntegrityError, transaction

from fma_core.rounds import RoundEngine
from fma_django import lifecycle, services
from fma_django.models import Event, EventKind, Experiment, ExperimentState, ModelUpdate
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore


def run_round(experiment: Experiment) -> str:
    return RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk)).status


def push(experiment, api, uploader, safetensors, value: float, **metrics: float):
    return uploader(api, experiment.pk, safetensors(value), X_FMA_METRICS=json.dumps(metrics))


def state_of(experiment: Experiment) -> tuple[str, bool, str]:
    experiment.refresh_from_db()
    return experiment.state, experiment.allow_aggregation, experiment.state_reason


def test_pause_resume_and_stop_through_the_api(dev_api, experiment, client_api, uploader, safetensors):
    url = f"/api/v1/models/{experiment.pk}/state/"
    paused = dev_api.post(url, {"state": "paused", "reason": "new data"}, format="json")
    assert paused.status_code == 200
    assert (paused.json()["state"], paused.json()["allow_aggregation"]) == ("paused", False)
    assert state_of(experiment) == ("paused", False, "new data")
    assert push(experiment, client_api, uploader, safetensors, 1.0).status_code == 201  # still collected
    assert run_round(experiment) == "idle"

    assert dev_api.post(url, {"state": "collecting"}, format="json").json()["state"] == "collecting"
    stopped = dev_api.post(url, {"state": "stopped", "reason": "wrong labels"}, format="json")
    assert stopped.json()["state_reason"] == "stopped by dev: wrong labels"
    again = dev_api.post(url, {"state": "collecting"}, format="json")
    assert (again.status_code, again.json()["code"]) == (409, "experiment_ended")
    assert "stopped by dev: wrong labels" in again.json()["detail"]
    assert state_of(experiment)[:2] == ("stopped", False)
    kinds = list(
        Event.objects.filter(experiment=experiment, user__isnull=False)
        .order_by("id")
        .values_list("kind", flat=True)
    )
    assert kinds[-3:] == [
        EventKind.AGGREGATION_PAUSED,
        EventKind.AGGREGATION_RESUMED,
        EventKind.EXPERIMENT_ENDED,
    ]


@pytest.mark.parametrize(
    ("body", "fault"),
    [
        ({"state": "finished"}, "state"),
        ({"state": "budget_spent"}, "state"),
        ({"state": "running"}, "state"),
        ({}, "state"),
        ({"state": "paused", "reason": "x" * 401}, "reason"),
    ],
)
def test_the_service_states_and_bad_bodies_are_refused(dev_api, experiment, body, fault):
    answer = dev_api.post(f"/api/v1/models/{experiment.pk}/state/", body, format="json")
    assert answer.status_code == 400
    assert fault in answer.json()["detail"]
    assert state_of(experiment)[:2] == ("collecting", True)


def test_other_developers_cannot_change_the_state(other_dev_api, experiment):
    answer = other_dev_api.post(f"/api/v1/models/{experiment.pk}/state/", {"state": "stopped"}, format="json")
    assert answer.status_code == 404
    assert state_of(experiment)[0] == "collecting"


def test_the_v1_switch_is_pause_and_resume(dev_api, experiment):
    url = f"/api/v1/models/{experiment.pk}/"
    assert dev_api.patch(url, {"allow_aggregation": False}, format="json").json()["state"] == "paused"
    assert Event.objects.filter(experiment=experiment, kind=EventKind.AGGREGATION_PAUSED).count() == 1
    dry = dev_api.patch(f"{url}?dry_run=true", {"allow_aggregation": True}, format="json")
    assert dry.json()["state"] == "collecting"
    assert state_of(experiment)[0] == "paused"  # a dry run changes nothing
    assert dev_api.patch(url, {"allow_aggregation": True}, format="json").json()["state"] == "collecting"
    created = dev_api.post("/api/v1/models/", {"name": "later", "allow_aggregation": False}, format="json")
    assert (created.json()["state"], created.json()["allow_aggregation"]) == ("paused", False)
    writing = dev_api.patch(url, {"state": "stopped"}, format="json")  # read-only: ignored, never written
    assert writing.json()["state"] == "collecting"


def test_the_database_keeps_the_switch_and_the_state_in_step(experiment):
    with pytest.raises(IntegrityError), transaction.atomic():
        Experiment.objects.filter(pk=experiment.pk).update(allow_aggregation=False)
    with pytest.raises(IntegrityError), transaction.atomic():
        Experiment.objects.filter(pk=experiment.pk).update(state=ExperimentState.FINISHED)


def test_a_round_limit_finishes_the_experiment_in_the_rounds_commit(
    dev_api, make_experiment, enroll, uploader, safetensors
):
    experiment = make_experiment(finish_when={"rounds": 2})
    api = enroll(experiment)
    for value in (1.0, 2.0):
        assert push(experiment, api, uploader, safetensors, value).status_code == 201
        assert run_round(experiment) == "committed"
    assert state_of(experiment) == ("finished", False, "round limit reached: 2 of 2 rounds")
    ended = Event.objects.get(experiment=experiment, kind=EventKind.EXPERIMENT_ENDED)
    assert (ended.user, ended.detail["state"], ended.detail["previous"]) == (None, "finished", "collecting")

    refused = push(experiment, api, uploader, safetensors, 3.0)
    assert (refused.status_code, refused.json()["code"]) == (409, "experiment_ended")
    assert "round limit reached" in refused.json()["detail"]
    assert ModelUpdate.objects.filter(experiment=experiment).count() == 2  # nothing stored
    assert api.get(f"/api/v1/models/{experiment.pk}/latest_weights/").status_code == 200  # still served

    url = f"/api/v1/models/{experiment.pk}/state/"
    early = dev_api.post(url, {"state": "collecting"}, format="json")
    assert (early.status_code, early.json()["code"]) == (409, "experiment_ended")
    assert "change finish_when" in early.json()["detail"]
    # raising the limit and resuming in one request of the v1 kind, as `fma apply` would
    resumed = dev_api.patch(
        f"/api/v1/models/{experiment.pk}/",
        {"finish_when": {"rounds": 3}, "allow_aggregation": True},
        format="json",
    )
    assert resumed.json()["state"] == "collecting", resumed.json()
    assert push(experiment, api, uploader, safetensors, 3.0).status_code == 201
    assert run_round(experiment) == "committed"
    assert state_of(experiment)[0] == "finished"


def test_lowering_the_limit_below_the_rounds_run_finishes_it_at_once(
    dev_api, experiment, client_api, uploader, safetensors
):
    push(experiment, client_api, uploader, safetensors, 1.0)
    assert run_round(experiment) == "committed"
    answer = dev_api.patch(f"/api/v1/models/{experiment.pk}/", {"finish_when": {"rounds": 1}}, format="json")
    assert (answer.json()["state"], answer.json()["finish_when"]) == ("finished", {"rounds": 1})


def test_a_training_metric_target_finishes_it(make_experiment, enroll, uploader, safetensors):
    experiment = make_experiment(finish_when={"metric": "accuracy", "source": "training", "at_least": 0.8})
    first, second = enroll(experiment), enroll(experiment)
    push(experiment, first, uploader, safetensors, 1.0, accuracy=0.7)
    push(experiment, second, uploader, safetensors, 1.0, accuracy=0.8)
    assert run_round(experiment) == "committed"
    assert state_of(experiment)[0] == "collecting"  # weighted mean 0.75
    push(experiment, first, uploader, safetensors, 2.0, accuracy=0.9)
    assert run_round(experiment) == "committed"
    assert state_of(experiment)[::2] == ("finished", "target reached: training accuracy 0.9 ≥ 0.8")


def test_an_evaluation_target_finishes_it_when_the_score_arrives(
    make_experiment, enroll, uploader, safetensors
):
    experiment = make_experiment(finish_when={"metric": "loss", "at_most": 0.25})
    api = enroll(experiment)
    push(experiment, api, uploader, safetensors, 1.0)
    assert run_round(experiment) == "committed"
    aggregate = experiment.aggregates.get()
    url = "/api/v1/client_aggregate_scores/"
    api.post(url, {"aggregate": aggregate.pk, "validation_results": {"loss": 0.2}}, format="json")
    assert state_of(experiment)[::2] == ("finished", "target reached: evaluation loss 0.2 ≤ 0.25")


@pytest.mark.parametrize(
    ("config", "fault"),
    [
        ([], "must be an object"),
        ({}, "must be an object"),
        ({"round": 3}, "unknown key(s) round"),
        ({"rounds": 0}, "rounds must be a whole number from 1"),
        ({"rounds": 2**63}, "rounds must be a whole number from 1 to 9223372036854775807"),
        ({"rounds": True}, "rounds must be a whole number"),
        ({"rounds": 2.5}, "rounds must be a whole number"),
        ({"at_least": 0.9}, "need a metric"),
        ({"metric": "accuracy"}, "exactly one of at_least and at_most"),
        ({"metric": "accuracy", "at_least": 0.9, "at_most": 1}, "exactly one of"),
        ({"metric": "accuracy", "at_least": "high"}, "at_least must be a finite number"),
        ({"metric": "accuracy", "at_least": 10**400}, "at_least must be a finite number"),
        ({"metric": "accuracy", "at_most": True}, "at_most must be a finite number"),
        ({"metric": "accuracy", "at_least": 0.9, "source": "clients"}, "source must be"),
        ({"metric": "", "at_least": 0.9}, "must name a metric"),
        ({"metric": "num_examples", "at_least": 9}, "must name a metric"),
    ],
)
def test_bad_finish_conditions_are_refused(dev_api, experiment, config, fault):
    answer = dev_api.patch(f"/api/v1/models/{experiment.pk}/", {"finish_when": config}, format="json")
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_finish_when")
    assert fault in answer.json()["detail"]
    experiment.refresh_from_db()
    assert experiment.finish_when is None


def test_a_spent_budget_is_final(dev_api, experiment, client_api, uploader, safetensors):
    assert lifecycle.experiment_end(
        experiment=experiment, state=ExperimentState.BUDGET_SPENT, reason="ε 8.1 would exceed 8"
    )
    assert not lifecycle.experiment_end(experiment=experiment, state=ExperimentState.FINISHED, reason="later")
    assert state_of(experiment) == ("budget_spent", False, "ε 8.1 would exceed 8")
    for state in ("collecting", "paused"):
        answer = dev_api.post(f"/api/v1/models/{experiment.pk}/state/", {"state": state}, format="json")
        assert (answer.status_code, answer.json()["code"]) == (409, "experiment_ended")
    refused = push(experiment, client_api, uploader, safetensors, 1.0)
    assert (refused.status_code, refused.json()["code"]) == (409, "experiment_ended")
    assert dev_api.get("/api/v1/models/?state=budget_spent").json()["count"] == 1


def test_a_settings_change_read_before_a_pause_does_not_undo_it(experiment, developer):
    stale = Experiment.objects.get(pk=experiment.pk)
    lifecycle.experiment_set_state(experiment=experiment, state="paused", user=developer)
    services.experiment_update(experiment=stale, user=developer, name="renamed")
    assert state_of(experiment)[:2] == ("paused", False)
    assert Experiment.objects.get(pk=experiment.pk).name == "renamed"
