"""Asynchronous experiments on the service: the setting through the API (stored as it reads back), the
combinations refused at creation with a 400 naming the fix, and buffered rounds whose staleness mix is
shown with the aggregate."""

from __future__ import annotations

import numpy as np
import pytest

from fma_core.rounds import RoundEngine
from fma_core.weights import to_bytes
from fma_django.models import ModelAggregate, ModelUpdate
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

from .conftest import make_weights

SETTING = {"buffer": 2, "staleness": {"function": "hinge", "a": 1, "b": 0}, "server_learning_rate": 0.5}


def run_round(experiment):
    return RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))


def initial_model():
    return {k: v.tolist() for k, v in make_weights(0.0).items()}


def test_the_api_stores_the_setting_as_it_reads_back(dev_api, make_experiment):
    experiment = make_experiment(asynchronous={"buffer": 3})
    shown = dev_api.get(f"/api/v1/models/{experiment.pk}/").json()
    assert shown["asynchronous"] == {"buffer": 3, "staleness": {"function": "fedbuff"}}
    patched = dev_api.patch(
        f"/api/v1/models/{experiment.pk}/",
        {"asynchronous": {"buffer": 4, "staleness": "constant", "max_staleness": 3}},
        format="json",
    )
    assert patched.status_code == 200, patched.content
    assert patched.json()["asynchronous"] == {
        "buffer": 4,
        "staleness": {"function": "constant"},
        "max_staleness": 3,
    }
    back = dev_api.patch(f"/api/v1/models/{experiment.pk}/", {"asynchronous": None}, format="json")
    assert back.status_code == 200
    assert back.json()["asynchronous"] is None


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"asynchronous": {"buffer": 0}}, "asynchronous.buffer"),
        ({"asynchronous": {"buffer": 2, "staleness": {"function": "soon"}}}, "unknown function 'soon'"),
        (
            {"asynchronous": {"buffer": 5}, "aggregator": "krum", "aggregator_params": {"f": 0}},
            "cannot run asynchronous rounds",
        ),
        ({"asynchronous": {"buffer": 5}, "aggregator": "median"}, "cannot run asynchronous rounds"),
        (
            {"asynchronous": {"buffer": 2, "server_learning_rate": 0.1}, "aggregator": "fedadam"},
            "takes its own server_learning_rate",
        ),
        ({"asynchronous": {"buffer": 2}, "round_policy": "all_clients"}, "may only add a deadline"),
        (
            {"asynchronous": {"buffer": 2}, "requirement": "require_x_updates", "requirement_args": [3]},
            "may only add a deadline",
        ),
        ({"asynchronous": {"buffer": 2}, "client_sampling": {"clients": 2}}, "clients never wait"),
        ({"asynchronous": {"buffer": 2}, "furthest_base_agg": 3}, "asynchronous.max_staleness"),
    ],
)
def test_combinations_asynchronous_rounds_cannot_honour_are_refused_with_a_400(
    dev_api, weights_dir, config, says
):
    body = {"name": "async", "initial_model": initial_model(), **config}
    refused = dev_api.post("/api/v1/models/", body, format="json")
    assert refused.status_code == 400, refused.content
    assert refused.json()["code"] == "invalid_asynchronous"
    assert says in refused.json()["detail"]
    dry = dev_api.post("/api/v1/models/?dry_run=true", body, format="json")
    assert (dry.status_code, dry.json()["code"]) == (400, "invalid_asynchronous")


def test_an_asynchronous_experiment_needs_an_initial_model(dev_api, weights_dir):
    refused = dev_api.post("/api/v1/models/", {"name": "a", "asynchronous": {"buffer": 2}}, format="json")
    assert refused.status_code == 400
    assert "create it with an initial_model" in refused.json()["detail"]


def test_a_deadline_and_a_server_optimizer_are_accepted(dev_api, weights_dir):
    body = {
        "name": "async",
        "initial_model": initial_model(),
        "aggregator": "fedavgm",
        "round_policy": {"policy": "deadline", "seconds": 30},
        "asynchronous": {"buffer": 4, "staleness": {"function": "polynomial", "a": 0.5}},
    }
    made = dev_api.post("/api/v1/models/", body, format="json")
    assert made.status_code == 201, made.content


def push(api, experiment, value, base=None, n=10):
    headers = {"HTTP_X_FMA_NUM_EXAMPLES": str(n)}
    if base is not None:
        headers["HTTP_X_FMA_BASE_AGGREGATE"] = str(base)
    response = api.generic(
        "POST",
        f"/api/v1/models/{experiment.pk}/upload_update/",
        to_bytes(make_weights(value)),
        content_type="application/octet-stream",
        **headers,
    )
    assert response.status_code == 201, response.content
    return response.json()["id"]


def test_rounds_close_every_k_updates_and_the_staleness_mix_is_shown(make_experiment, enroll, dev_api):
    experiment = make_experiment(asynchronous=SETTING)
    clients = [enroll(experiment) for _ in range(3)]
    push(clients[0], experiment, 1.0, n=10)
    assert run_round(experiment).status == "not_ready"  # one of K = 2
    push(clients[1], experiment, 3.0, n=30)
    first = run_round(experiment)
    assert first.status == "committed"
    one = ModelAggregate.objects.get(round_number=1)
    # round 1 from the initial model (zeros): x = 0 + 0.5·(10·1 + 30·3)/40
    weights = one.weights_key
    with weight_store().open_weights(weights) as reader:
        got = {name: reader.read_block(name, 0, 1, None)[0] for name in reader.tensors}
    assert all(v == pytest.approx(0.5 * 100 / 40) for v in got.values())
    # round 2: one stale update (trained on the initial model, τ = 1, s = 1/2), one fresh, one waits
    stale = push(clients[2], experiment, 2.0, n=20)
    fresh = push(clients[0], experiment, 5.0, base=one.pk, n=20)
    push(clients[1], experiment, 7.0, base=one.pk, n=20)
    assert run_round(experiment).status == "committed"
    two = ModelAggregate.objects.get(round_number=2)
    x1 = 0.5 * 100 / 40
    expected = x1 + 0.5 * (20 * 0.5 * (2.0 - 0.0) + 20 * 1.0 * (5.0 - x1)) / 40
    with weight_store().open_weights(two.weights_key) as reader:
        values = [reader.read_block(name, 0, 1, None)[0] for name in reader.tensors]
    assert np.allclose(values, expected, rtol=1e-6)
    assert ModelUpdate.objects.filter(status="pending").count() == 1
    detail = dev_api.get(f"/api/v1/model_aggregates/{two.pk}/").json()
    staleness = detail["report"]["staleness"]
    assert staleness["mix"] == {"0": 1, "1": 1}
    assert staleness["updates"][str(stale)] == {"tau": 1, "discount": 0.5}
    assert staleness["updates"][str(fresh)] == {"tau": 0, "discount": 1.0}
    shares = {u["id"]: u["weight"] for u in detail["updates"]}
    assert shares == pytest.approx({stale: 0.25, fresh: 0.5})
