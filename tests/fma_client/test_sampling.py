"""``fma_client.Client`` in an experiment that samples clients per round: it asks before training,
waits as the server says and tries again by itself, and gives up with ``NotSelected`` after its
``selection_wait``."""

from __future__ import annotations

import io
import json
import sys
import threading

import numpy as np
import pytest

from fma_client import Client, NotSelected, WebClient
from fma_django import services
from fma_django.models import ModelUpdate

from .conftest import INITIAL

UPDATE = {name: np.ones_like(value) for name, value in INITIAL.items()}


@pytest.fixture
def sampled(developer, settings):
    """Two clients' experiment taking one a round, the one that waited longest: each round selects
    whoever the previous one did not."""
    settings.FMA_SAMPLING_RETRY_SECONDS = 1
    return services.experiment_create(
        developer=developer,
        name="sampled",
        initial_model=dict(INITIAL),
        client_sampling={"clients": 1, "mode": "longest_waiting"},
    )


def pair(server, experiment, **options):
    token = services.enrollment_token_issue(experiment=experiment, user=experiment.developer)[1]
    clients = [
        Client.enroll(server, experiment.pk, enrollment_token=token, quiet=True, **options) for _ in "ab"
    ]
    chosen = next(c for c in clients if c.participation().selected)
    return chosen, next(c for c in clients if c is not chosen)


def in_background(call):
    """Run ``call`` in a thread; returns (thread, outcome list: the result or the exception)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as error:  # handed to the test, which asserts on it
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_client_not_selected_gives_up_at_once_without_a_wait(server, sampled):
    chosen, waiting = pair(server, sampled, selection_wait=0)
    answer = waiting.participation()
    assert (answer.selected, answer.round, answer.retry_after) == (False, 1, 1)
    with pytest.raises(NotSelected, match=r"round 1 of experiment \d+ did not select client") as pulled:
        waiting.pull()
    assert "selection_wait=0 s" in str(pulled.value)
    model = waiting.pull(for_training=False)  # the model itself, to evaluate, is there for every client
    with pytest.raises(NotSelected) as pushed:
        waiting.push(dict(model.weights), num_examples=1)
    assert pushed.value.code == "not_selected"
    assert pushed.value.retry_after == 1
    assert "not among the clients selected for round 1" in str(pushed.value)
    assert not ModelUpdate.objects.exists()
    assert chosen.pull().aggregate is None


def test_pull_waits_for_the_round_that_selects_the_client(server, sampled, run_round):
    chosen, waiting = pair(server, sampled, selection_wait=120)
    thread, outcome = in_background(waiting.pull)

    chosen.pull()
    chosen.push(UPDATE, num_examples=3)
    aggregate = run_round(sampled.pk)  # round 2 selects the client that waited

    thread.join(timeout=120)
    assert not thread.is_alive()
    (model,) = outcome
    assert model.aggregate == aggregate
    assert waiting.participation().selected


def test_push_waits_and_tries_again_until_a_round_takes_it(server, sampled, run_round):
    chosen, waiting = pair(server, sampled, selection_wait=120)
    trained = dict(waiting.pull(for_training=False).weights)
    thread, outcome = in_background(lambda: waiting.push(trained, num_examples=2))

    chosen.pull()
    chosen.push(UPDATE, num_examples=3)
    run_round(sampled.pk)

    thread.join(timeout=120)
    assert not thread.is_alive()
    (update,) = outcome
    assert update["status"] == "pending"
    assert update["client"] == waiting.uuid
    assert ModelUpdate.objects.filter(client__uuid=waiting.uuid).count() == 1


def test_the_cli_creates_a_sampled_experiment_and_shows_a_rounds_selection(
    fma, server, developer, run_round, tmp_path, monkeypatch
):
    monkeypatch.setattr(sys, "stdin", io.StringIO("dev-password\n"))
    assert fma("login", "--url", server, "--username", "dev", "--password-stdin")[0] == 0
    (tmp_path / "experiment.yaml").write_text(
        "name: sampled\ntensor_spec: [{name: w, dtype: F32, shape: [2]}]\n"
        "client_sampling: {fraction: 0.5, min_clients: 1, seed: 1234}\n"
    )
    status, out, _ = fma("--json", "experiments", "create", tmp_path / "experiment.yaml")
    assert status == 0, out
    created = json.loads(out)
    assert created["client_sampling"] == {"fraction": 0.5, "min_clients": 1, "seed": 1234, "mode": "uniform"}
    (tmp_path / "bad.yaml").write_text("name: bad\nclient_sampling: {fraction: 0.5, mode: fair}\n")
    status, _, err = fma("experiments", "create", tmp_path / "bad.yaml")
    assert status != 0
    assert "unknown mode 'fair'" in err

    status, out, _ = fma("--json", "enroll-token", created["id"])
    token = json.loads(out)["token"]
    clients = [Client.enroll(server, created["id"], enrollment_token=token, quiet=True) for _ in "ab"]
    (chosen,) = [c for c in clients if c.participation().selected]
    chosen.push({"w": np.ones(2, np.float32)}, num_examples=1)
    aggregate = run_round(created["id"])

    status, out, _ = fma("aggregate", aggregate)
    assert status == 0
    (line,) = [line for line in out.splitlines() if line.startswith("sampling")]
    assert json.loads(line.split(None, 1)[1]) == {
        "seed": 1234,
        "mode": "uniform",
        "round": 1,
        "enrolled": 2,
        "selected": [chosen.uuid],
    }


def test_the_fma_connect_compatible_web_client_raises_not_selected(server, sampled):
    """``fma_client.WebClient`` keeps fma-connect's calls; a push the round did not take raises the typed
    ``NotSelected`` (status 409, as fma-connect's APIException would say) with the server's Retry-After."""
    chosen, waiting = pair(server, sampled, selection_wait=0)
    legacy = WebClient(sampled.pk, url=server, token=waiting.token)
    layers = [np.zeros((4, 3)).tolist(), [0.0, 0.0, 0.0]]
    with pytest.raises(NotSelected) as refused:
        legacy.send_update(layers)
    assert refused.value.status_code == 409
    assert refused.value.retry_after == 1
    assert WebClient(sampled.pk, url=server, token=chosen.token).send_update(layers)["status"] == "pending"
