"""The v1 resources: experiments CRUD, enrollment and credentials, aggregates, publishing, scores, downloads."""

from __future__ import annotations

import numpy as np
import pytest
from rest_framework.test import APIClient

from fma_core.rounds import RoundEngine
from fma_core.weights import load
from fma_django.models import Client, Event, EventKind, Experiment, ModelAggregate, ModelArtifact
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

INITIAL = [np.zeros((4, 3)).tolist(), [0.0, 0.0, 0.0]]


def run_round(experiment) -> None:
    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    assert outcome.status == "committed", outcome


@pytest.fixture
def aggregated(experiment, client_api, uploader, safetensors):
    assert uploader(client_api, experiment.pk, safetensors(2.0)).status_code == 201
    run_round(experiment)
    return experiment.aggregates.get()


def test_create_experiment_with_initial_model_sets_spec_and_artifact(dev_api, developer, weights_dir):
    response = dev_api.post(
        "/api/v1/models/",
        {
            "name": "m",
            "aggregator": "avg_values_if_data",
            "requirement": "all_clients",
            "initial_model": INITIAL,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["developer"] == developer.pk
    assert body["tensor_spec"] == [
        {"name": "0", "dtype": "F32", "shape": [4, 3]},
        {"name": "1", "dtype": "F32", "shape": [3]},
    ]
    artifact = ModelArtifact.objects.get(pk=body["current_artifact"])
    assert artifact.version == "1.0.0"
    assert "initial_model" not in body
    assert Event.objects.filter(kind=EventKind.EXPERIMENT_CREATED).count() == 1


def test_a_tensor_spec_in_numpys_dtype_names_is_stored_and_echoed_in_safetensors_codes(dev_api, developer):
    """``float32`` is what a numpy user writes; the API keeps one form, ``F32``, in every answer."""
    spec = [{"name": "w", "dtype": "float32", "shape": [2]}, {"name": "n", "dtype": "I64", "shape": []}]
    created = dev_api.post("/api/v1/models/", {"name": "m", "tensor_spec": spec}, format="json")
    assert created.status_code == 201, created.content
    stored = [{"name": "w", "dtype": "F32", "shape": [2]}, {"name": "n", "dtype": "I64", "shape": []}]
    assert created.json()["tensor_spec"] == stored
    assert Experiment.objects.get().tensor_spec == stored
    changed = dev_api.patch(
        f"/api/v1/models/{created.json()['id']}/",
        {"tensor_spec": [{"name": "w", "dtype": "uint8", "shape": [2]}]},
        format="json",
    )
    assert changed.json()["tensor_spec"] == [{"name": "w", "dtype": "U8", "shape": [2]}]
    refused = dev_api.post(
        "/api/v1/models/",
        {"name": "m", "tensor_spec": [{"name": "w", "dtype": "float", "shape": [1]}]},
        format="json",
    )
    assert refused.status_code == 400
    assert (
        "dtype 'float' is not a numeric type FMA aggregates (supported: F16, F32" in refused.json()["detail"]
    )
    assert "numpy's names: float16, float32" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"name": "m", "aggregator": "nope"}, "aggregator"),
        ({"name": "m", "aggregator_params": {"bogus": 1}}, "bogus"),
        ({"name": "m", "requirement": "require_x_updates", "requirement_args": []}, "require_x_updates"),
        ({"name": "m", "round_policy": {"policy": "someday"}}, "someday"),
        ({"name": "m", "tensor_spec": [{"name": "w", "dtype": "BOOL", "shape": [1]}]}, "BOOL"),
        ({"name": "m", "update_schema": {"type": 12}}, "update_schema"),
        ({"name": "m", "furthest_base_agg": 0}, "furthest_base_agg"),
    ],
)
def test_invalid_configuration_is_refused(dev_api, body, says):
    response = dev_api.post("/api/v1/models/", body, format="json")
    assert response.status_code == 400
    assert says in str(response.json())
    assert not Experiment.objects.exists()


MOMENTUM = {
    "name": "m",
    "aggregator": "server_momentum",
    "aggregator_params": {"momentum": 0.5},
    "initial_model": INITIAL,
}


def test_a_third_party_aggregator_is_accepted_once_installed_and_its_parameters_checked(dev_api, plugin):
    created = dev_api.post("/api/v1/models/", MOMENTUM, format="json")
    assert created.status_code == 201, created.content
    assert (created.json()["aggregator"], created.json()["aggregator_params"]) == (
        "server_momentum",
        {"momentum": 0.5},
    )
    for params, says in (({"momentum": "high"}, "momentum"), ({"nesterov": True}, "nesterov")):
        refused = dev_api.post("/api/v1/models/", {**MOMENTUM, "aggregator_params": params}, format="json")
        assert refused.status_code == 400
        assert says in str(refused.json())
    # it reads the current global model: without an initial model, its first round could never run
    without_model = {name: value for name, value in MOMENTUM.items() if name != "initial_model"}
    refused = dev_api.post("/api/v1/models/", without_model, format="json")
    assert refused.status_code == 400
    assert "'server_momentum' reads the current global model" in str(refused.json())
    assert "initial_model" in str(refused.json())
    assert Experiment.objects.count() == 1


@pytest.mark.parametrize(
    ("aggregator", "params", "says"),
    [
        ("fedadam", {"beta_1": 1.0}, "'beta_1' must be in [0, 1)"),
        ("fedyogi", {"beta_2": -0.1}, "'beta_2' must be in [0, 1)"),
        ("fedadagrad", {"tau": 0}, "'tau' must be in (0, ∞)"),
        ("fedavgm", {"server_learning_rate": -1}, "'server_learning_rate' must be in (0, ∞)"),
        ("fedavgm", {"momentum": 1.5}, "'momentum' must be in [0, 1)"),
        ("fedadagrad", {"beta_2": 0.99}, "beta_2"),  # Adagrad has no β₂
    ],
)
def test_a_server_optimizer_with_a_parameter_out_of_range_is_refused(dev_api, aggregator, params, says):
    body = {"name": "m", "aggregator": aggregator, "aggregator_params": params, "initial_model": INITIAL}
    response = dev_api.post("/api/v1/models/", body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_aggregator", response.json()
    assert says in str(response.json())
    assert not Experiment.objects.exists()


def test_a_server_optimizer_is_accepted_with_its_parameters(dev_api):
    params = {"server_learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}
    body = {"name": "m", "aggregator": "fedyogi", "aggregator_params": params, "initial_model": INITIAL}
    created = dev_api.post("/api/v1/models/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["aggregator_params"] == params


def test_a_third_party_aggregator_that_is_not_installed_is_refused_naming_those_that_are(dev_api):
    response = dev_api.post("/api/v1/models/", MOMENTUM, format="json")
    assert response.status_code == 400
    message = str(response.json())
    assert "unknown aggregator 'server_momentum'" in message
    assert "fedavg" in message  # the available ones
    assert not Experiment.objects.exists()


def test_switching_to_an_aggregator_that_reads_the_global_model_needs_one(dev_api, make_experiment, plugin):
    modelless = make_experiment(name="no model", initial_model=None)
    refused = dev_api.patch(
        f"/api/v1/models/{modelless.pk}/", {"aggregator": "server_momentum"}, format="json"
    )
    assert refused.status_code == 400
    assert "initial_model" in str(refused.json())
    modelless.refresh_from_db()
    assert modelless.aggregator != "server_momentum"
    with_model = make_experiment(name="with model")
    switched = dev_api.patch(
        f"/api/v1/models/{with_model.pk}/", {"aggregator": "server_momentum"}, format="json"
    )
    assert switched.status_code == 200, switched.content
    with_model.refresh_from_db()
    assert with_model.aggregator == "server_momentum"


def test_a_developer_cannot_act_for_another_user(dev_api, other_developer, experiment):
    response = dev_api.post("/api/v1/models/", {"name": "m", "developer": other_developer.pk}, format="json")
    assert response.status_code == 403
    moved = dev_api.patch(
        f"/api/v1/models/{experiment.pk}/", {"developer": other_developer.pk}, format="json"
    )
    assert moved.status_code == 403
    experiment.refresh_from_db()
    assert experiment.developer_id != other_developer.pk
    assert Experiment.objects.count() == 1


def test_staff_sees_all_and_may_assign_a_developer(api_for, experiment, make_experiment, other_developer):
    from django.contrib.auth.models import User

    make_experiment(owner=other_developer, name="theirs")
    staff = api_for(User.objects.create_user("admin", is_staff=True))
    assert staff.get("/api/v1/models/").json()["count"] == 2
    created = staff.post(
        "/api/v1/models/", {"name": "for them", "developer": other_developer.pk}, format="json"
    )
    assert created.status_code == 201
    assert created.json()["developer"] == other_developer.pk


def test_list_is_paginated_with_count_and_next(dev_api, make_experiment):
    for n in range(3):
        make_experiment(name=f"e{n}", initial_model=None)
    first = dev_api.get("/api/v1/models/?page_size=2").json()
    assert (first["count"], len(first["results"])) == (3, 2)
    assert first["next"] is not None
    second = dev_api.get(first["next"]).json()
    assert (len(second["results"]), second["next"]) == (1, None)
    assert dev_api.get("/api/v1/models/?name=e1").json()["count"] == 1


def test_update_pause_and_delete(dev_api, experiment, stored_files, django_capture_on_commit_callbacks):
    paused = dev_api.patch(f"/api/v1/models/{experiment.pk}/", {"allow_aggregation": False}, format="json")
    assert paused.status_code == 200
    assert paused.json()["allow_aggregation"] is False
    assert Event.objects.filter(kind=EventKind.AGGREGATION_PAUSED).exists()
    assert dev_api.get("/api/v1/models/?allow_aggregation=false").json()["count"] == 1
    assert stored_files()
    with django_capture_on_commit_callbacks(execute=True):
        assert dev_api.delete(f"/api/v1/models/{experiment.pk}/").status_code == 204
    assert not Experiment.objects.exists()
    assert stored_files() == []


def test_enrollment_needs_a_token_unless_open(experiment, dev_api, make_experiment):
    anonymous = APIClient()
    refused = anonymous.post(f"/api/v1/models/{experiment.pk}/register_client/")
    assert refused.status_code == 403
    assert refused.json()["code"] == "token_required"
    assert (
        anonymous.post(
            f"/api/v1/models/{experiment.pk}/register_client/", {"enrollment_token": "forged"}, format="json"
        ).status_code
        == 403
    )
    assert not Client.objects.exists()

    token = dev_api.post(
        f"/api/v1/models/{experiment.pk}/enrollment_tokens/", {"max_uses": 1}, format="json"
    ).json()["token"]
    first = anonymous.post(
        f"/api/v1/models/{experiment.pk}/register_client/", {"enrollment_token": token}, format="json"
    )
    assert first.status_code == 200
    assert first.json()["credential"].startswith(first.json()["uuid"] + ".")
    used_up = anonymous.post(
        f"/api/v1/models/{experiment.pk}/register_client/", {"enrollment_token": token}, format="json"
    )
    assert used_up.status_code == 403

    open_experiment = make_experiment(name="open", open_enrollment=True)
    assert anonymous.post(f"/api/v1/models/{open_experiment.pk}/register_client/").status_code == 200
    client = Client.objects.get(uuid=first.json()["uuid"])
    assert len(client.secret_hash) == 64
    assert first.json()["credential"].split(".", 1)[1] not in client.secret_hash


def test_legacy_header_only_works_in_legacy_mode(experiment, client_api):
    legacy = APIClient()
    legacy.credentials(HTTP_CLIENT_UUID=client_api.uuid)  # a token client's public id is not a credential
    assert legacy.get(f"/api/v1/models/{experiment.pk}/get_latest_aggregate/").status_code == 401
    assert (
        APIClient().post(f"/api/v1/models/{experiment.pk}/register_client/").json()["code"]
        == "token_required"
    )


def test_rotate_and_revoke_credentials(experiment, client_api, dev_api):
    old = client_api._credentials["HTTP_AUTHORIZATION"]
    rotated = client_api.post("/api/v1/clients/rotate_credential/")
    assert rotated.status_code == 200
    stale = APIClient()
    stale.credentials(HTTP_AUTHORIZATION=old)
    assert stale.get(f"/api/v1/models/{experiment.pk}/get_latest_aggregate/").status_code == 401
    fresh = APIClient()
    fresh.credentials(HTTP_AUTHORIZATION=f"Client {rotated.json()['credential']}")
    assert fresh.get(f"/api/v1/models/{experiment.pk}/get_latest_aggregate/").status_code == 200

    revoked = dev_api.post(
        f"/api/v1/models/{experiment.pk}/revoke_client/", {"client": client_api.uuid}, format="json"
    )
    assert revoked.status_code == 204
    assert fresh.get(f"/api/v1/models/{experiment.pk}/get_latest_aggregate/").status_code == 404
    assert Event.objects.filter(kind=EventKind.CREDENTIAL_REVOKED).exists()


def test_latest_model_aggregate_and_artifact(experiment, client_api, aggregated):
    latest = client_api.get(f"/api/v1/models/{experiment.pk}/get_latest_aggregate/").json()
    assert (latest["id"], latest["round_number"]) == (aggregated.pk, 1)
    model = client_api.get(f"/api/v1/models/{experiment.pk}/get_latest_model/").json()
    assert model["aggregate"] == aggregated.pk
    assert np.asarray(model["values"][0]) == pytest.approx(np.full((4, 3), 2.0))
    artifact = client_api.get(f"/api/v1/models/{experiment.pk}/get_current_artifact/").json()
    assert artifact["version"] == "1.0.0"
    detail = client_api.get(f"/api/v1/model_aggregates/{aggregated.pk}/").json()
    assert [u["weight"] for u in detail["updates"]] == [1.0]


def test_an_aggregate_shows_its_algorithm_parameters_and_server_state(experiment, dev_api, aggregated):
    """Added beside the v1 fields: the SHA-256 of the server state the round left (null: none), with
    the algorithm and parameters the round ran; the state's storage key stays internal."""
    (row,) = dev_api.get(f"/api/v1/model_aggregates/?federated_model={experiment.pk}").json()["results"]
    assert (row["aggregator"], row["aggregator_params"], row["state_content_id"]) == (
        "fedavg",
        aggregated.aggregator_params,
        None,
    )
    assert "report" not in row  # per-update details: on the aggregate's own page only
    state = "9" * 64
    report = {"aggregator": {"selected": [str(aggregated.updates.get().pk)], "scores": {"1": 0.5}}}
    ModelAggregate.objects.filter(pk=aggregated.pk).update(
        aggregator_params={"server_lr": 0.1},
        state_key="aggregates/state.safetensors",
        state_content_id=state,
        report=report,
    )
    detail = dev_api.get(f"/api/v1/model_aggregates/{aggregated.pk}/").json()
    assert (detail["aggregator_params"], detail["state_content_id"]) == ({"server_lr": 0.1}, state)
    assert detail["report"] == report
    assert "state_key" not in detail
    assert {"id", "federated_model", "result", "parent", "round_number", "content_id", "updates"} <= set(
        detail
    )
    patched = dev_api.patch(
        f"/api/v1/model_aggregates/{aggregated.pk}/",
        {"state_content_id": "0" * 64, "report": {}},
        format="json",
    )
    assert (patched.status_code, patched.json()["state_content_id"]) == (200, state)  # read-only
    assert dev_api.get(f"/api/v1/model_aggregates/{aggregated.pk}/").json()["report"] == report


def test_download_has_etag_range_and_304(experiment, client_api, aggregated):
    url = f"/api/v1/models/{experiment.pk}/latest_weights/"
    full = client_api.get(url, HTTP_ACCEPT="application/octet-stream")
    body = b"".join(full.streaming_content)
    assert full.status_code == 200
    assert full["ETag"] == f'"{aggregated.content_id}"'
    assert full["X-FMA-Aggregate"] == str(aggregated.pk)  # the base to name in the next update
    assert load(body)["dense"] == pytest.approx(2.0)
    part = client_api.get(url, HTTP_RANGE="bytes=8-15")
    assert part.status_code == 206
    assert b"".join(part.streaming_content) == body[8:16]
    assert part["Content-Range"] == f"bytes 8-15/{len(body)}"
    assert client_api.get(url, HTTP_IF_NONE_MATCH=full["ETag"]).status_code == 304
    assert client_api.get(url, HTTP_RANGE=f"bytes={len(body)}-").status_code == 416


def test_publish_aggregate(experiment, dev_api, aggregated):
    url = f"/api/v1/model_aggregates/{aggregated.pk}/publish_aggregate/"
    missing = dev_api.post(url, {}, format="json")
    assert (missing.status_code, missing.json()["code"]) == (400, "required")
    published = dev_api.post(url, {"version": "2.0.0"}, format="json")
    assert published.status_code == 201
    duplicate = dev_api.post(url, {"version": "2.0.0"}, format="json")
    assert (duplicate.status_code, duplicate.json()["code"]) == (400, "duplicate_version")
    experiment.refresh_from_db()
    assert experiment.current_artifact_id == published.json()["id"]
    assert Event.objects.filter(kind=EventKind.PUBLISHED).count() == 1
    scored = dev_api.patch(
        f"/api/v1/model_aggregates/{aggregated.pk}/", {"validation_score": 0.75}, format="json"
    )
    assert scored.json()["validation_score"] == 0.75


def test_scores_one_per_client_and_schema_checked(make_experiment, enroll, uploader, safetensors):
    experiment = make_experiment(client_agg_results_schema={"type": "object", "required": ["f1"]})
    client = enroll(experiment)
    uploader(client, experiment.pk, safetensors(1.0))
    run_round(experiment)
    aggregate = experiment.aggregates.get()
    url = "/api/v1/client_aggregate_scores/"
    bad = client.post(url, {"aggregate": aggregate.pk, "validation_results": {"acc": 1}}, format="json")
    assert (bad.status_code, bad.json()["code"]) == (400, "schema_mismatch")
    good = client.post(
        url,
        {"aggregate": aggregate.pk, "validation_results": {"f1": 0.9}, "client": client.uuid},
        format="json",
    )
    assert good.status_code == 201
    retried = client.post(url, {"aggregate": aggregate.pk, "validation_results": {"f1": 0.9}}, format="json")
    assert (retried.status_code, retried.json()["id"]) == (200, good.json()["id"])  # a retry: the same score
    changed = client.post(url, {"aggregate": aggregate.pk, "validation_results": {"f1": 0.8}}, format="json")
    assert (changed.status_code, changed.json()["code"]) == (400, "duplicate_score")
    assert client.get(f"{url}?aggregate={aggregate.pk}").json()["count"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in_seconds": 59310796101811547420646965248},
        {"expires_in_seconds": 10**12},
        {"max_uses": 2**31},
    ],
)
def test_enrollment_token_limits_out_of_range_are_refused(experiment, dev_api, body):
    """Found by tests/fuzz: a huge expiry overflowed the date arithmetic (500)."""
    response = dev_api.post(f"/api/v1/models/{experiment.pk}/enrollment_tokens/", body, format="json")
    assert response.status_code == 400, response.content
    assert set(body) <= set(response.json())
    assert not experiment.enrollment_tokens.exists()


HUGE = 10**400  # valid JSON; no float holds it
PRIVACY = {
    "clip": {"bound": 1.0},
    "noise_multiplier": 1.0,
    "expected_clients": 20,
    "epsilon": 8,
    "delta": 1e-5,
}


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        (
            {"aggregator": "fedavgm", "aggregator_params": {"momentum": HUGE}},
            "invalid_aggregator",
            "momentum",
        ),
        (
            {"asynchronous": {"buffer": 2, "server_learning_rate": HUGE}},
            "invalid_asynchronous",
            "learning_rate",
        ),
        (
            {"asynchronous": {"buffer": 2, "staleness": {"function": "polynomial", "a": HUGE}}},
            "invalid_asynchronous",
            "'a' must be a number",
        ),
        ({"asynchronous": {"buffer": True}}, "invalid_asynchronous", "buffer"),
        ({"privacy": {**PRIVACY, "epsilon": HUGE}}, "invalid_privacy", "epsilon"),
        ({"privacy": {**PRIVACY, "expected_clients": True}}, "invalid_privacy", "expected_clients"),
        ({"secure_aggregation": {"clip": HUGE}}, "invalid_secure_aggregation", "clip"),
        ({"secure_aggregation": {"clip": 1e308}}, "invalid_secure_aggregation", "clip"),  # 2·clip is no float
        ({"secure_aggregation": {"clip": 1e-300}}, "invalid_secure_aggregation", "clip"),  # its scale is none
        ({"secure_aggregation": {"clip": True}}, "invalid_secure_aggregation", "clip"),
        ({"secure_aggregation": {"clip": "8"}}, "invalid_secure_aggregation", "clip"),
        ({"secure_aggregation": {"bits": 20.5}}, "invalid_secure_aggregation", "bits"),
        ({"secure_aggregation": {"bits": "20"}}, "invalid_secure_aggregation", "bits"),
        ({"secure_aggregation": {"max_weight": True}}, "invalid_secure_aggregation", "max_weight"),
        ({"secure_aggregation": {"threshold": True}}, "invalid_secure_aggregation", "threshold"),
        ({"secure_aggregation": {"stage_seconds": True}}, "invalid_secure_aggregation", "stage_seconds"),
        ({"secure_aggregation": {"stage_seconds": HUGE}}, "invalid_secure_aggregation", "stage_seconds"),
        ({"finish_when": {"metric": "accuracy", "at_least": HUGE}}, "invalid_finish_when", "at_least"),
        ({"finish_when": {"rounds": 2**63}}, "invalid_finish_when", "rounds"),
    ],
)
def test_a_setting_holding_a_boolean_text_or_a_number_no_float_holds_is_refused_and_nothing_stored(
    dev_api, experiment, change, code, says
):
    """Each setting's numbers are numbers of the kind it takes (a boolean or "8" is not one, nor
    1e400 written out in digits, which no float holds): a 400 naming it, never a 500, nothing saved."""
    before = Experiment.objects.filter(pk=experiment.pk).values().get()
    response = dev_api.patch(f"/api/v1/models/{experiment.pk}/", change, format="json")
    assert (response.status_code, response.json()["code"]) == (400, code), response.content
    assert says in response.json()["detail"]
    assert Experiment.objects.filter(pk=experiment.pk).values().get() == before
