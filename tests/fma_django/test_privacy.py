"""An experiment's differential privacy (``privacy``) on the Django store: checked at creation and on
change (400s naming the fault, nothing stored), its key never shown, rounds that record the ε spent,
and a budget that stops the next round, for a new engine too (a restart)."""

from __future__ import annotations

import json

import pytest

from fma_core.privacy import epsilon_spent
from fma_core.rounds import RoundEngine
from fma_django.models import Event, EventKind, Experiment, ExperimentState, ModelUpdate, UpdateStatus
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

INITIAL = [[[0.0] * 3] * 4, [0.0] * 3]
PRIVACY = {
    "clip": {"bound": 1.0},
    "noise_multiplier": 1.0,
    "expected_clients": 3,
    "epsilon": 8.0,
    "delta": 1e-5,
}


def create(dev_api, **fields):
    body = {"name": "m", "initial_model": INITIAL, **fields}
    return dev_api.post("/api/v1/models/", body, format="json")


def test_privacy_is_kept_and_shown_with_its_ledger_and_never_its_key(dev_api):
    created = create(dev_api, privacy=PRIVACY)
    assert created.status_code == 201, created.content
    shown = dev_api.get(f"/api/v1/models/{created.json()['id']}/").json()
    assert shown["privacy"] == PRIVACY
    assert shown["privacy_spent"] == {
        "epsilon": 0.0,
        "delta": 1e-5,
        "budget_epsilon": 8.0,
        "charged_rounds": 0,
        "clip_bound": 1.0,
        "budget_spent": False,
    }
    assert "privacy_secret" not in shown
    assert create(dev_api, name="without").json()["privacy_spent"] is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (
            {"privacy": {**PRIVACY, "noise_multiplier": -1}},
            "privacy.noise_multiplier must be a finite number",
        ),
        ({"privacy": {**PRIVACY, "delta": 2}}, "privacy.delta must be below 1"),
        ({"privacy": {**PRIVACY, "clip": {"bound": 1, "adaptive": {"initial": 1}}}}, "exactly one of"),
        ({"privacy": {**PRIVACY, "epsilon": None}}, "privacy.epsilon must be a finite number above 0"),
        ({"privacy": PRIVACY, "aggregator": "median"}, "aggregator 'median' is not usable with differential"),
        ({"privacy": PRIVACY, "aggregator": "trimmed_mean"}, "aggregator 'trimmed_mean' is not usable"),
        ({"privacy": PRIVACY, "update_norm": {"mode": "refuse", "bound": 1}}, "update_norm does not combine"),
        (
            {"privacy": PRIVACY, "client_sampling": {"clients": 3, "mode": "longest_waiting"}},
            "'longest_waiting' is not usable with differential privacy",
        ),
        (
            {"privacy": PRIVACY, "tensor_spec": [{"name": "steps", "dtype": "I64", "shape": [1]}]},
            "floating-point tensors only",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_fault(dev_api, fields, says):
    body = {"name": "m", "initial_model": INITIAL, **fields}
    if "tensor_spec" in fields:
        del body["initial_model"]
    response = dev_api.post("/api/v1/models/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_privacy"
    assert says in response.json()["detail"]
    assert not Experiment.objects.exists()


def test_privacy_needs_an_initial_model_and_cannot_change_once_a_round_ran(
    dev_api, make_experiment, enroll, uploader, safetensors
):
    response = dev_api.post("/api/v1/models/", {"name": "m", "privacy": PRIVACY}, format="json")
    assert response.status_code == 400
    assert "initial_model" in response.json()["detail"]
    experiment = make_experiment(privacy=PRIVACY)
    for api in [enroll(experiment) for _ in range(3)]:
        assert uploader(api, experiment.pk, safetensors(0.1)).status_code == 201
    assert run(experiment).status == "committed"
    refused = dev_api.patch(
        f"/api/v1/models/{experiment.pk}/", {"privacy": {**PRIVACY, "epsilon": 80.0}}, format="json"
    )
    assert refused.status_code == 409
    assert "privacy cannot change once a round has run" in refused.json()["detail"]


def run(experiment):
    return RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))


def test_rounds_record_the_epsilon_spent_and_a_spent_budget_stops_the_next_round_after_a_restart(
    dev_api, make_experiment, enroll, uploader, safetensors
):
    budget = (epsilon_spent(1.0, 2, 1e-5) + epsilon_spent(1.0, 3, 1e-5)) / 2
    experiment = make_experiment(privacy={**PRIVACY, "epsilon": budget})
    clients = [enroll(experiment) for _ in range(3)]
    for round_number in (1, 2):
        base = {} if round_number == 1 else {"X_FMA_BASE_AGGREGATE": str(experiment.aggregates.get().pk)}
        for api in clients:
            assert uploader(api, experiment.pk, safetensors(0.1 * round_number), **base).status_code == 201
        assert run(experiment).status == "committed"
    second = experiment.aggregates.get(round_number=2)
    section = dev_api.get(f"/api/v1/model_aggregates/{second.pk}/").json()["report"]["privacy"]
    assert section["epsilon"] == pytest.approx(epsilon_spent(1.0, 2, 1e-5))
    assert section["charged_rounds"] == 2
    key = bytes(Experiment.objects.get(pk=experiment.pk).privacy_secret)
    assert key.hex() not in json.dumps(dev_api.get(f"/api/v1/model_aggregates/{second.pk}/").json())
    for api in clients:
        sent = uploader(api, experiment.pk, safetensors(0.3), X_FMA_BASE_AGGREGATE=str(second.pk))
        assert sent.status_code == 201
    outcome = run(experiment)  # a new engine and store: all it knows comes from the database
    assert outcome.status == "budget_spent"
    assert f"over the budget ε = {budget:g}" in outcome.reason
    assert experiment.aggregates.count() == 2
    assert ModelUpdate.objects.filter(experiment=experiment, status=UpdateStatus.PENDING).count() == 3
    ended = Event.objects.filter(experiment=experiment, kind=EventKind.EXPERIMENT_ENDED)
    assert [e.detail["state"] for e in ended] == ["budget_spent"]
    assert ended.get().detail["reason"] == outcome.reason
    shown = dev_api.get(f"/api/v1/models/{experiment.pk}/").json()
    assert shown["state"] == "budget_spent"
    assert shown["privacy_spent"]["budget_spent"] is True
    assert run(experiment).status == "idle"  # an ended experiment is not claimed
    resumed = dev_api.post(f"/api/v1/models/{experiment.pk}/state/", {"state": "collecting"}, format="json")
    assert resumed.status_code == 409
    # were it forced back by hand, the ledger in the lineage still stops the round
    Experiment.objects.filter(pk=experiment.pk).update(
        state=ExperimentState.COLLECTING, allow_aggregation=True
    )
    assert run(experiment).status == "budget_spent"
    assert Experiment.objects.get(pk=experiment.pk).state == ExperimentState.BUDGET_SPENT


def test_the_admin_never_shows_the_noise_key(admin_client, make_experiment):
    experiment = make_experiment(privacy=PRIVACY)
    key = DjangoMetadataStore().privacy_secret(str(experiment.pk))
    assert key == DjangoMetadataStore().privacy_secret(str(experiment.pk))  # made once, then kept
    page = admin_client.get(f"/admin/fma_django/experiment/{experiment.pk}/change/").content.decode()
    assert "noise_multiplier" in page
    assert "privacy_secret" not in page
    assert key.hex() not in page


@pytest.mark.parametrize(
    ("other", "says"),
    [
        ({"asynchronous": {"buffer": 2}}, "remove asynchronous"),
        ({"secure_aggregation": {}}, "privacy"),
    ],
)
def test_central_privacy_does_not_combine_with_the_other_modes(dev_api, other, says):
    response = dev_api.post(
        "/api/v1/models/", {"name": "m", "initial_model": INITIAL, "privacy": PRIVACY, **other}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["code"] in ("invalid_privacy", "invalid_secure_aggregation")
    assert says in response.json()["detail"]
    assert not Experiment.objects.exists()
