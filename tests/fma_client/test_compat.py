"""``fma_client.WebClient``: fma-connect's API and return shapes against a live service, minus its bugs."""

from __future__ import annotations

import numpy as np
import pytest

from fma_client import AuthenticationError, PermissionDenied, ValidationError, WebClient
from fma_django import services
from fma_django.models import Evaluation, ModelUpdate

LAYERS = [np.zeros((2, 2)).tolist(), [0.0, 0.0]]


@pytest.fixture
def legacy(developer):
    return services.experiment_create(
        developer=developer, name="legacy", legacy_mode=True, initial_model=LAYERS
    )


def test_a_fma_connect_script_runs_unchanged_in_legacy_mode(server, legacy, run_round):
    first = WebClient(legacy.pk, url=server)  # no trailing slash: the original needed one
    second = WebClient(legacy.pk, url=server + "/")
    assert first.register() != second.register()
    assert first.check_for_new_model_aggregate() is None
    initial = first.check_for_latest_model()
    assert initial == {"values": LAYERS, "aggregate": None}
    assert first.check_for_latest_model() is None  # already seen
    assert first.get_current_artifact()["version"] == "1.0.0"

    sent = first.send_update([[[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0]])
    second.send_update([[[3.0, 3.0], [3.0, 3.0]], [3.0, 3.0]], base_aggregate=None)
    assert (sent["status"], sent["client"], sent["federated_model"]) == ("pending", first.uuid, legacy.pk)

    aggregate_id = run_round(legacy.pk)
    aggregate = first.check_for_new_model_aggregate()
    assert aggregate["id"] == aggregate_id
    assert first.check_for_new_model_aggregate() is None
    latest = second.check_for_latest_model()
    assert latest == {"values": [[[2.0, 2.0], [2.0, 2.0]], [2.0, 2.0]], "aggregate": aggregate_id}
    score = first.send_val_results({"f1": [0.5, 0.7]}, aggregate_id)
    assert score["aggregate"] == aggregate_id
    assert Evaluation.objects.get().validation_results == {"f1": [0.5, 0.7]}


def test_update_after_before_any_aggregate_was_seen_is_not_a_type_error(server, legacy, run_round):
    client = WebClient(legacy.pk, url=server)
    client.send_update([[[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0]])
    aggregate_id = run_round(legacy.pk)
    assert client.check_for_new_model_aggregate(update_after=aggregate_id) is None
    assert client.check_for_new_model_aggregate(update_after=aggregate_id - 1)["id"] == aggregate_id
    fresh = WebClient(legacy.pk, uuid=client.uuid, url=server)
    assert fresh.check_for_latest_model(update_after=aggregate_id) is None


def test_send_update_registers_first_instead_of_sending_an_anonymous_request(server, legacy):
    client = WebClient(legacy.pk, url=server)
    client.send_update([[[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0]])
    assert str(ModelUpdate.objects.get().client.uuid) == client.uuid


def test_errors_are_typed_and_keep_the_status_code(server, legacy, experiment):
    client = WebClient(legacy.pk, url=server)
    with pytest.raises(ValidationError) as refused:
        client.send_update([[[1.0]], [1.0]])  # wrong shape
    assert refused.value.status_code == 400
    with pytest.raises(PermissionDenied, match="enrollment token"):
        WebClient(experiment.pk, url=server).register()  # not a legacy experiment
    with pytest.raises(AuthenticationError):
        WebClient(legacy.pk, uuid="6f1c2e4a-0000-4000-8000-000000000000", url=server).get_current_artifact()


def test_an_enrollment_token_gives_the_web_client_a_real_credential(server, experiment, enrollment_token):
    client = WebClient(experiment.pk, url=server, enrollment_token=enrollment_token)
    client.register()
    update = client.send_update([np.ones((4, 3)).tolist(), [1.0, 1.0, 1.0]])
    assert update["client"] == client.uuid
    assert ModelUpdate.objects.get().client.secret_hash  # enrolled with a secret, not the legacy way
