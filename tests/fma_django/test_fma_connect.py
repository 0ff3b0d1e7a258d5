"""The original client, fma-connect 0.0.2 from PyPI, unchanged, against a live server in legacy mode."""

from __future__ import annotations

import numpy as np
import pytest
from fma_connect import WebClient
from fma_connect.exceptions import APIException

from fma_core.rounds import RoundEngine
from fma_django.models import Evaluation, ModelUpdate, UpdateStatus
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

INITIAL = [np.zeros((2, 2)).tolist(), [0.0, 0.0]]


@pytest.fixture
def server_url(live_server) -> str:
    return live_server.url + "/"


def test_web_client_round_trip_in_legacy_mode(transactional_db, weights_dir, developer, server_url):
    from fma_django import services

    experiment = services.experiment_create(
        developer=developer, name="legacy", legacy_mode=True, initial_model=INITIAL
    )
    first, second = WebClient(experiment.pk, url=server_url), WebClient(experiment.pk, url=server_url)
    assert first.register() != second.register()
    assert first.check_for_new_model_aggregate() is None
    initial = first.check_for_latest_model()
    assert (initial["aggregate"], initial["values"]) == (None, INITIAL)
    assert first.get_current_artifact()["version"] == "1.0.0"

    sent = first.send_update([[[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0]])
    second.send_update([[[3.0, 3.0], [3.0, 3.0]], [3.0, 3.0]], base_aggregate=None)
    assert sent["status"] == "pending"
    assert sent["client"] == first.uuid

    outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    assert outcome.status == "committed"

    aggregate = first.check_for_new_model_aggregate()
    assert aggregate["id"] == int(outcome.aggregate.aggregate_id)
    assert first.check_for_new_model_aggregate() is None  # nothing newer since
    latest = second.check_for_latest_model()
    assert latest["aggregate"] == aggregate["id"]
    assert latest["values"] == [[[2.0, 2.0], [2.0, 2.0]], [2.0, 2.0]]
    first.send_val_results({"f1": [0.5, 0.7]}, aggregate["id"])

    assert set(ModelUpdate.objects.values_list("status", flat=True)) == {UpdateStatus.CONSUMED}
    assert Evaluation.objects.get().validation_results == {"f1": [0.5, 0.7]}
    with pytest.raises(APIException) as refused:
        first.send_update([[[1.0]], [1.0]])  # wrong shape: a clear 400, not a 500
    assert "status_code=400" in str(refused.value)


def test_web_client_is_refused_when_legacy_mode_is_off(transactional_db, weights_dir, developer, server_url):
    from fma_django import services

    experiment = services.experiment_create(developer=developer, name="secure", initial_model=INITIAL)
    with pytest.raises(APIException) as refused:
        WebClient(experiment.pk, url=server_url).register()
    assert "status_code=403" in str(refused.value)


def test_a_client_the_round_did_not_select_gets_a_409_that_says_when_to_come_back(
    transactional_db, weights_dir, developer, server_url, settings
):
    """fma-connect knows nothing of sampling: its push gets the v1 error body (``detail``) and status,
    never a silent 201 that would not count."""
    from fma_django import services

    settings.FMA_SAMPLING_RETRY_SECONDS = 30
    experiment = services.experiment_create(
        developer=developer,
        name="sampled",
        legacy_mode=True,
        initial_model=INITIAL,
        client_sampling={"clients": 1, "seed": 8},
    )
    clients = [WebClient(experiment.pk, url=server_url) for _ in range(2)]
    for client in clients:
        client.register()
    refusals = []
    for client in clients:
        try:
            client.send_update([[[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0]])
        except APIException as error:
            refusals.append(str(error))
    assert len(refusals) == 1  # one client selected, one told to come back
    assert "status_code=409" in refusals[0]
    assert "not among the clients selected for round 1" in refusals[0]
    assert "Come back in 30 s" in refusals[0]
    assert ModelUpdate.objects.count() == 1
