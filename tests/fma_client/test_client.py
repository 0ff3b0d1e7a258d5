"""``fma_client.Client`` against a live service: enroll, pull, push, wait, report, and its refusals."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fma_client import AuthenticationError, Client, NotFound, PermissionDenied, ValidationError, WaitTimeout
from fma_django.models import Evaluation, ModelUpdate

from .conftest import INITIAL


def trained(value: float) -> dict[str, np.ndarray]:
    return {name: np.full_like(array, value) for name, array in INITIAL.items()}


def test_full_loop_enroll_pull_push_wait_report(server, experiment, enrollment_token, run_round):
    with (
        Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as alice,
        Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as bob,
    ):
        weights, aggregate = alice.pull()
        assert aggregate is None  # the initial model
        assert list(weights) == ["dense", "bias"]  # order kept, not sorted
        assert all(np.array_equal(weights[n], INITIAL[n]) for n in INITIAL)
        bob.pull()

        update = alice.push(trained(1.0), num_examples=1, metrics={"loss": 0.5})
        assert (update["status"], update["num_examples"], update["metrics"]) == ("pending", 1, {"loss": 0.5})
        assert update["client"] == alice.uuid
        bob.push(trained(4.0), num_examples=3)

        aggregate_id = run_round(experiment.pk)
        new_weights, new_aggregate = alice.wait_for_new_model(timeout=30, poll_interval=0.1)
        assert new_aggregate == aggregate_id
        np.testing.assert_allclose(new_weights["dense"], np.full((4, 3), 3.25))  # (1·1 + 4·3) / 4

        score = alice.report_scores(new_aggregate, {"accuracy": 0.9})
        assert score["aggregate"] == new_aggregate
        assert Evaluation.objects.get().validation_results == {"accuracy": 0.9}

        # The next push starts from the aggregate just pulled.
        assert alice.push(trained(2.0), num_examples=2)["base_aggregate"] == aggregate_id


def test_saved_credential_works_in_a_new_client(server, experiment, enrollment_token):
    token = Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True).token
    with Client(server, experiment.pk, token=token, quiet=True) as again:
        assert again.pull().aggregate is None


def test_wait_for_new_model_returns_once_a_round_completes(server, experiment, enrollment_token, run_round):
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        client.pull()
        client.push(trained(1.0), num_examples=1)
        waiter = threading.Thread(target=run_round, args=(experiment.pk,))
        waiter.start()
        model = client.wait_for_new_model(timeout=60, poll_interval=0.1)
        waiter.join()
        assert model.aggregate is not None
        with pytest.raises(WaitTimeout, match="no aggregate newer than"):
            client.wait_for_new_model(timeout=0.2, poll_interval=0.05)


def test_keras_list_and_torch_state_dict_are_sent_by_name(server, experiment, enrollment_token):
    class Tensor:  # what the adapter needs of a torch.Tensor: detach → cpu → numpy
        def __init__(self, array):
            self.array = array

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.array

    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        client.pull()
        keras = client.push([np.ones((4, 3), np.float32), np.ones(3, np.float32)], num_examples=1)
        torch = client.push({n: Tensor(a + 2) for n, a in INITIAL.items()}, num_examples=1)
    assert keras["status"] == torch["status"] == "pending"
    assert ModelUpdate.objects.count() == 2


def test_a_push_that_does_not_fit_the_experiment_is_refused_with_the_reason(
    server, experiment, enrollment_token
):
    with (
        Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client,
        pytest.raises(ValidationError) as refused,
    ):
        client.push({"dense": np.zeros((2, 2), np.float32)}, num_examples=1)
    assert refused.value.status_code == 400
    assert "bias" in str(refused.value) or "dense" in str(refused.value)
    assert not ModelUpdate.objects.exists()


def test_enrollment_and_credentials_errors_say_what_to_do(server, experiment, enrollment_token):
    with pytest.raises(PermissionDenied, match="enrollment token is unknown"):
        Client.enroll(server, experiment.pk, enrollment_token="not-a-token", quiet=True)
    with (
        pytest.raises(AuthenticationError, match="fma login"),
        Client(
            server, experiment.pk, token="00000000-0000-0000-0000-000000000000.nope", quiet=True
        ) as stranger,
    ):
        stranger.pull()
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        other = Client(server, experiment.pk + 1000, token=client.token, quiet=True)
        with pytest.raises(NotFound, match="check the id"):
            other.pull()
        other.close()


def test_rotating_the_credential_retires_the_old_one(server, experiment, enrollment_token):
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        old = client.token
        assert client.rotate_credential() != old
        assert client.pull().aggregate is None
    with Client(server, experiment.pk, token=old, quiet=True) as stale, pytest.raises(AuthenticationError):
        stale.pull()


def test_a_list_pushed_before_any_pull_is_refused_with_the_advice_to_pull_first(
    server, experiment, enrollment_token
):
    layers = [np.ones((4, 3), np.float32), np.ones(3, np.float32)]
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        with pytest.raises(ValidationError, match=r"call pull\(\) before pushing a list"):
            client.push(layers, num_examples=1)
        client.pull()
        assert client.push(layers, num_examples=1)["status"] == "pending"
