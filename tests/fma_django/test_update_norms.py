"""An experiment's norm bound on updates (``update_norm``): checked at creation and on change (400s naming
what is wrong, nothing stored), shown in the API, and applied by rounds on the Django store, whose
aggregates' reports keep the norms an adaptive bound reads back."""

from __future__ import annotations

import math

import pytest

from fma_core.rounds import RoundEngine
from fma_django.models import Experiment, ModelUpdate, UpdateStatus
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

INITIAL = [[[0.0] * 3] * 4, [0.0] * 3]  # 15 zeros: an update of all v has a change of norm |v|·√15
ROOT15 = math.sqrt(15)


def create(dev_api, **fields):
    body = {"name": "m", "initial_model": INITIAL, **fields}
    return dev_api.post("/api/v1/models/", body, format="json")


def test_a_bound_is_kept_and_shown(dev_api):
    update_norm = {"mode": "clip", "adaptive": {"multiplier": 2.5, "window": 3}}
    created = create(dev_api, update_norm=update_norm)
    assert created.status_code == 201, created.content
    shown = dev_api.get(f"/api/v1/models/{created.json()['id']}/").json()
    assert shown["update_norm"] == update_norm
    assert create(dev_api, name="without a bound").json()["update_norm"] is None


@pytest.mark.parametrize(
    ("update_norm", "says"),
    [
        ({"mode": "drop", "bound": 1}, "update_norm.mode must be one of refuse, clip"),
        ({"mode": "clip", "bound": 0}, "update_norm.bound must be a finite number above 0"),
        ({"mode": "clip", "bound": -1e308}, "above 0"),
        ({"mode": "clip", "bound": "1"}, "finite number"),
        ({"mode": "clip", "bound": 1, "adaptive": {}}, "exactly one"),
        ({"mode": "clip", "bound": 1, "lmit": 1}, "unknown key(s) lmit"),
        ({"mode": "refuse", "adaptive": {"window": 0}}, "window must be a whole number"),
        ([1, 2], "must be an object"),
    ],
)
def test_a_bad_bound_is_refused_naming_what_is_wrong(dev_api, update_norm, says):
    response = create(dev_api, update_norm=update_norm)
    assert response.status_code == 400, response.content
    assert says in str(response.json())
    assert not Experiment.objects.exists()


@pytest.mark.parametrize("number", ["1e400", "NaN", "-Infinity", "1" + "0" * 400])
def test_a_bound_that_is_not_finite_is_refused(dev_api, number):
    body = f'{{"name": "m", "update_norm": {{"mode": "clip", "adaptive": {{"multiplier": {number}}}}}}}'
    response = dev_api.generic("POST", "/api/v1/models/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert not Experiment.objects.exists()


def test_a_bound_needs_an_initial_model_to_measure_changes_from(dev_api, make_experiment):
    body = {"name": "m", "update_norm": {"mode": "clip", "bound": 1.0}}
    response = dev_api.post("/api/v1/models/", body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_update_norm"
    assert "initial_model" in response.json()["detail"]
    modelless = make_experiment(name="no model", initial_model=None)
    refused = dev_api.patch(f"/api/v1/models/{modelless.pk}/", body, format="json")
    assert refused.status_code == 400
    assert "initial_model" in str(refused.json())
    modelless.refresh_from_db()
    assert modelless.update_norm is None


def test_a_bad_bound_is_refused_on_change_and_the_old_one_kept(dev_api, make_experiment):
    experiment = make_experiment(update_norm={"mode": "refuse", "bound": 2.0})
    refused = dev_api.patch(
        f"/api/v1/models/{experiment.pk}/", {"update_norm": {"mode": "clip", "bound": 0}}, format="json"
    )
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_update_norm"
    experiment.refresh_from_db()
    assert experiment.update_norm == {"mode": "refuse", "bound": 2.0}


def run_round(experiment) -> None:
    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    assert outcome.status == "committed", outcome


def test_rounds_refuse_above_the_adaptive_bound_read_back_from_earlier_reports(
    make_experiment, enroll, uploader, safetensors, dev_api
):
    experiment = make_experiment(update_norm={"mode": "refuse", "adaptive": {"multiplier": 2, "window": 2}})
    clients = [enroll(experiment) for _ in range(4)]
    for api, value in zip(clients, (1.0, 1.0, 1.2, 50.0), strict=True):
        assert uploader(api, experiment.pk, safetensors(value)).status_code == 201
    run_round(experiment)
    first = experiment.aggregates.get()
    refused = ModelUpdate.objects.get(status=UpdateStatus.QUARANTINED)
    assert f"{50 * ROOT15:.6g}" in refused.status_reason
    # this round's median is 1.1·√15 (the four norms, the refused one too: a minority cannot move it far)
    assert f"the bound {2.2 * ROOT15:.6g} (2 × the median norm of this round)" in refused.status_reason
    section = dev_api.get(f"/api/v1/model_aggregates/{first.pk}/").json()["report"]["norms"]
    assert section["source"] == "this round"
    assert section["bound"] == pytest.approx(2.2 * ROOT15)
    assert sorted(section["accepted"].values()) == pytest.approx([ROOT15, ROOT15, 1.2 * ROOT15])
    # round 2 takes its bound from round 1's accepted norms, kept in the database with its aggregate
    for api, value in zip(clients, (1.0, 5.0, 1.5), strict=False):  # changes from round 1's model, 3.2 / 3
        sent = uploader(api, experiment.pk, safetensors(value), X_FMA_BASE_AGGREGATE=str(first.pk))
        assert sent.status_code == 201, sent.content
    run_round(experiment)
    second = experiment.aggregates.get(round_number=2)
    assert second.report["norms"]["source"] == "recent rounds"
    assert second.report["norms"]["bound"] == pytest.approx(2 * ROOT15)
    assert list(second.report["norms"]["refused"].values()) == pytest.approx([(5 - 3.2 / 3) * ROOT15])
    assert ModelUpdate.objects.filter(status=UpdateStatus.QUARANTINED).count() == 2
