"""Krum and Bulyan through the API: their limits against the round policy refused at creation (400), and
a round's selection and scores in the aggregate's detail."""

from __future__ import annotations

import hashlib

import pytest

from fma_core.rounds import RoundEngine
from fma_django.models import Experiment
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore


def body(aggregator: str, params: dict, policy: object = None) -> dict:
    created = {"name": "robust", "aggregator": aggregator, "aggregator_params": params}
    if policy is not None:
        created["round_policy"] = policy
    return created


@pytest.mark.parametrize(
    ("aggregator", "params", "policy", "says"),
    [
        ("krum", {"f": 1}, None, "can close a round with 1 update(s)"),
        ("krum", {"f": 1}, {"policy": "require_x_updates", "x": 4}, "needs at least 5"),
        ("krum", {"f": 1, "m": 6}, {"policy": "require_x_updates", "x": 5}, "needs at least 6"),
        ("bulyan", {"f": 1}, {"policy": "require_x_updates", "x": 6}, "needs at least 7"),
        ("bulyan", {"f": 1}, {"policy": "deadline", "seconds": 60, "min_updates": 3}, "with 3 update(s)"),
        (
            "krum",
            {"f": 2},
            {"any_of": [{"policy": "all_clients"}, {"policy": "deadline", "seconds": 9, "min_updates": 1}]},
            "needs at least 7",
        ),
    ],
)
def test_a_round_policy_that_closes_rounds_below_the_limit_is_refused(
    dev_api, aggregator, params, policy, says
):
    response = dev_api.post("/api/v1/models/", body(aggregator, params, policy), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_round_policy"
    assert says in response.json()["detail"]
    assert '"policy": "require_x_updates"' in response.json()["detail"]  # says what would do
    assert not Experiment.objects.exists()


@pytest.mark.parametrize(
    ("aggregator", "params", "says"),
    [
        ("krum", {}, "missing parameter(s) f for aggregator 'krum'"),
        ("bulyan", {"f": -1}, "f must be at least 0"),
        ("krum", {"f": 1, "m": "all"}, "'m' for aggregator 'krum' must be a int"),
    ],
)
def test_bad_parameters_are_refused(dev_api, aggregator, params, says):
    policy = {"policy": "require_x_updates", "x": 20}
    response = dev_api.post("/api/v1/models/", body(aggregator, params, policy), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_aggregator"
    assert says in response.json()["detail"]


@pytest.mark.parametrize(
    "policy",
    [
        {"policy": "require_x_updates", "x": 7},
        "all_clients",  # depends on how many enroll: the rounds wait for 7
        {"all_of": [{"policy": "min_fraction", "fraction": 0.5}, {"policy": "require_x_updates", "x": 1}]},
    ],
)
def test_a_policy_that_can_wait_for_the_limit_is_accepted(dev_api, policy):
    response = dev_api.post("/api/v1/models/", body("bulyan", {"f": 1}, policy), format="json")
    assert response.status_code == 201, response.content


def test_raising_f_past_what_the_policy_waits_for_is_refused(dev_api):
    created = dev_api.post(
        "/api/v1/models/", body("krum", {"f": 1}, {"policy": "require_x_updates", "x": 5}), format="json"
    ).json()
    refused = dev_api.patch(
        f"/api/v1/models/{created['id']}/", {"aggregator_params": {"f": 2}}, format="json"
    )
    assert refused.status_code == 400
    assert "needs at least 7" in refused.json()["detail"]
    assert Experiment.objects.get().aggregator_params == {"f": 1}


def test_the_aggregate_detail_shows_the_selection_each_score_and_the_shares(
    dev_api, enroll, uploader, safetensors
):
    policy = {"policy": "require_x_updates", "x": 5}
    created = dev_api.post("/api/v1/models/", body("krum", {"f": 1, "m": 2}, policy), format="json")
    assert created.status_code == 201, created.content
    experiment = Experiment.objects.get(pk=created.json()["id"])
    for value in (1.0, 1.1, 0.9, 1.05, 40.0):  # the last one far from the rest
        assert uploader(enroll(experiment), experiment.pk, safetensors(value)).status_code == 201
    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    assert outcome.status == "committed", outcome
    aggregate = experiment.aggregates.get()
    detail = dev_api.get(f"/api/v1/model_aggregates/{aggregate.pk}/").json()
    report = detail["report"]["aggregator"]
    far = str(experiment.model_updates.get(content_id=hashlib.sha256(safetensors(40.0)).hexdigest()).pk)
    assert len(report["selected"]) == 2
    assert far not in report["selected"]
    assert set(report["scores"]) == {str(u.pk) for u in experiment.model_updates.all()}
    assert report["scores"][far] == max(report["scores"].values())
    shares = {str(u["id"]): u["weight"] for u in detail["updates"]}
    assert {u for u, w in shares.items() if w} == set(report["selected"])
    assert sorted(shares.values()) == [0.0, 0.0, 0.0, 0.5, 0.5]
    # each input as the round measured it against the aggregate: the far one alone is an outlier
    inputs = {str(u["id"]): u for u in detail["updates"]}
    assert {u for u, i in inputs.items() if i["outlier"]} == {far}
    assert inputs[far]["distance"] == max(i["distance"] for i in inputs.values())
    assert all(i["norm"] is None and i["cosine"] is None for i in inputs.values())  # no model before round 1
    assert {i["client"] for i in inputs.values()} == {
        str(u.client.uuid) for u in experiment.model_updates.all()
    }
