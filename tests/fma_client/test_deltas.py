"""Experiments that take deltas: clients push ``trained - pulled``, rounds read ``base + delta``."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests

from fma_client import Client, FmaClientError, ValidationError
from fma_core.weights import load, to_bytes
from fma_django import ingestion, services
from fma_django.errors import Conflict, ValidationFailed
from fma_django.models import ModelUpdate
from fma_django.storage import weight_store

from .conftest import INITIAL


@pytest.fixture
def delta_experiment(developer):
    start = {name: np.full_like(value, 10.0) for name, value in INITIAL.items()}
    return services.experiment_create(
        developer=developer,
        name="deltas",
        initial_model=start,
        update_kind="delta",
        open_enrollment=True,
        round_policy={"policy": "require_x_updates", "x": 1},
    )


def trained(base: dict[str, np.ndarray], step: float) -> dict[str, np.ndarray]:
    return {name: value + step for name, value in base.items()}


def stored_update(update: dict) -> dict[str, np.ndarray]:
    with weight_store().open(ModelUpdate.objects.get(pk=update["id"]).weights_key) as stream:
        return load(stream)


def test_clients_send_the_change_and_the_round_adds_the_average_change(server, delta_experiment, run_round):
    with (
        Client.enroll(server, delta_experiment.pk, quiet=True) as alice,
        Client.enroll(server, delta_experiment.pk, quiet=True) as bob,
    ):
        first = alice.push(trained(alice.pull().weights, 1.0), num_examples=1)
        bob.push(trained(bob.pull().weights, 3.0), num_examples=1)
        # what travelled, and is stored, is the change, not the model
        np.testing.assert_array_equal(stored_update(first)["dense"], np.full((4, 3), 1.0))
        run_round(delta_experiment.pk)
        np.testing.assert_allclose(
            alice.wait_for_new_model(timeout=10).weights["dense"], np.full((4, 3), 12.0)
        )


def test_a_stale_delta_applies_to_the_model_it_was_trained_from(server, delta_experiment, run_round):
    with (
        Client.enroll(server, delta_experiment.pk, quiet=True) as fresh,
        Client.enroll(server, delta_experiment.pk, quiet=True) as slow,
    ):
        slow_model = slow.pull()  # the initial model, 10
        fresh.push(trained(fresh.pull().weights, 4.0), num_examples=1)
        run_round(delta_experiment.pk)  # round 1: 14
        fresh.push(trained(fresh.pull().weights, 2.0), num_examples=1)  # 14 + 2 = 16
        slow.push(trained(slow_model.weights, 0.0), num_examples=1)  # initial + 0 = 10
        run_round(delta_experiment.pk)
        np.testing.assert_allclose(fresh.wait_for_new_model(timeout=10).weights["bias"], np.full(3, 13.0))


def test_a_delta_needs_the_pulled_model_and_its_tensors(server, delta_experiment):
    with Client.enroll(server, delta_experiment.pk, quiet=True) as client:
        with pytest.raises(ValidationError, match="takes updates as 'delta'") as refused:
            client.push(trained(INITIAL, 1.0), num_examples=1)  # nothing pulled: sent as weights
        assert refused.value.code == "wrong_update_kind"
        model = client.pull()
        with pytest.raises(FmaClientError, match="takes deltas"):
            client.push(trained(model.weights, 1.0), num_examples=1, base_aggregate=12345)
        with pytest.raises(ValidationError, match="not the pulled model's"):
            client.push({"dense": model.weights["dense"]}, num_examples=1)
    assert ModelUpdate.objects.count() == 0


def test_delta_experiments_need_an_initial_model_and_keep_their_kind(developer, delta_experiment):
    with pytest.raises(ValidationFailed, match="needs an initial_model"):
        services.experiment_create(developer=developer, name="no-base", update_kind="delta")
    with pytest.raises(ValidationFailed, match="fma-connect"):
        services.experiment_create(
            developer=developer, name="legacy", update_kind="delta", legacy_mode=True, initial_model=INITIAL
        )
    client, _ = services.client_register(experiment=delta_experiment, client=None, enrollment_token=None)
    ingestion.update_submit(
        experiment=delta_experiment, client=client, stream=io.BytesIO(to_bytes(INITIAL)), update_kind="delta"
    )
    with pytest.raises(Conflict, match="cannot change"):
        services.experiment_update(experiment=delta_experiment, user=developer, update_kind="weights")


def test_the_one_request_form_declares_its_kind_too(server, delta_experiment):
    """curl users say what they send (header X-FMA-Update-Kind); undeclared means weights."""
    with Client.enroll(server, delta_experiment.pk, quiet=True) as client:
        url = f"{server}/api/v1/models/{delta_experiment.pk}/upload_update/"
        headers = {"Authorization": f"Client {client.token}", "Content-Type": "application/octet-stream"}
        body = to_bytes(trained(INITIAL, 0.5))
        refused = requests.post(url, data=body, headers=headers, timeout=30)
        assert refused.status_code == 400
        assert refused.json()["code"] == "wrong_update_kind"
        assert ModelUpdate.objects.count() == 0
        accepted = requests.post(
            url, data=body, headers={**headers, "X-FMA-Update-Kind": "delta"}, timeout=30
        )
        assert accepted.status_code == 201, accepted.text
