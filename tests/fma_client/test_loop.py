"""``fma_client.train_loop`` against a live service with an asynchronous experiment: clients pull, train
and push without ever waiting for a round, each update lands in exactly one aggregate, the loop stops
on a count, a signal or a stop event, and rides out a server that cannot be reached; ``fma aggregate``
shows each update's staleness."""

from __future__ import annotations

import itertools
import json
import signal
import threading

import numpy as np
import pytest

from fma_client import Client, Retry, ServerUnavailable, Trained, WebClient, train_loop
from fma_core.rounds import RoundEngine
from fma_django import lifecycle, services
from fma_django.models import ModelAggregate, ModelUpdate
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

from .conftest import INITIAL


@pytest.fixture
def buffered(developer):
    return services.experiment_create(
        developer=developer,
        name="async",
        initial_model=dict(INITIAL),
        asynchronous={"buffer": 2, "staleness": {"function": "fedbuff"}},
    )


def enrolled(server, experiment, count):
    token = services.enrollment_token_issue(experiment=experiment, user=experiment.developer)[1]
    return [Client.enroll(server, experiment.pk, enrollment_token=token, quiet=True) for _ in range(count)]


TURNS = itertools.count(1)


def step(model):
    """One turn of "training": the pulled model plus a step of its own (the service takes the same bytes
    on the same base from one client once)."""
    turn = next(TURNS)
    return Trained({k: v + turn for k, v in model.weights.items()}, 10, {"loss": 0.5})


def run_rounds(experiment) -> list[str]:
    engine = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1)
    statuses = []
    while (outcome := engine.run_round(str(experiment.pk))).status == "committed":
        statuses.append(outcome.status)
    return statuses


def test_clients_push_without_waiting_and_every_update_lands_in_one_aggregate(server, buffered):
    clients = enrolled(server, buffered, 3)
    results = [None] * 3

    def loop(i):
        results[i] = train_loop(clients[i], step, updates=4)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # no round ran meanwhile: nobody waited for one
    assert not ModelAggregate.objects.exists()
    assert [r.stopped for r in results] == ["updates"] * 3
    pushed = sorted(u for r in results for u in r.updates)
    assert len(pushed) == len(set(pushed)) == 12
    assert run_rounds(buffered) == ["committed"] * 6  # K = 2
    consumed = ModelUpdate.objects.filter(status="consumed")
    assert sorted(consumed.values_list("pk", flat=True)) == pushed
    assert all(u.aggregate_id is not None for u in consumed)


def test_a_turn_trains_from_the_newest_model_and_the_cli_shows_the_staleness(
    server, buffered, dev_token, fma
):
    (one, two) = enrolled(server, buffered, 2)
    bases = []

    def after_push(update_id, model):
        bases.append(model.aggregate)
        run_rounds(buffered)

    train_loop(one, step, updates=1)  # trained on the initial model, waits in the buffer
    train_loop(two, step, updates=3, on_push=after_push)
    # two's first push completed round 1 (with one's); its next turn trained from round 1's model, and
    # its third push completed round 2
    first = ModelAggregate.objects.get(round_number=1).pk
    assert bases == [None, first, first]
    two_aggregate = ModelAggregate.objects.get(round_number=2)
    staleness = two_aggregate.report["staleness"]
    assert sum(staleness["mix"].values()) == 2
    status, out, _ = fma("--url", server, "--token", dev_token, "aggregate", two_aggregate.pk)
    assert status == 0
    assert "TAU" in out
    assert "DISCOUNT" in out
    assert "staleness" in out
    status, out, _ = fma("--url", server, "--token", dev_token, "--json", "aggregate", two_aggregate.pk)
    assert json.loads(out)["report"]["staleness"]["mix"] == staleness["mix"]


def test_a_signal_stops_the_loop_after_the_turn_under_way(server, buffered):
    (client,) = enrolled(server, buffered, 1)
    turns = []

    def train(model):
        turns.append(model)
        if len(turns) == 2:
            signal.raise_signal(signal.SIGINT)
        return step(model)

    before = signal.getsignal(signal.SIGINT)
    result = train_loop(client, train, handle_signals=True)
    assert (result.stopped, len(result.updates)) == ("signal", 2)  # the second turn's update was pushed
    assert ModelUpdate.objects.filter(experiment=buffered).count() == 2
    assert signal.getsignal(signal.SIGINT) is before


def test_a_stop_event_and_a_time_limit_end_the_loop(server, buffered):
    (client,) = enrolled(server, buffered, 1)
    stop = threading.Event()
    stop.set()
    assert train_loop(client, step, stop=stop).stopped == "stopped"
    assert train_loop(client, step, seconds=0).stopped == "seconds"
    assert not ModelUpdate.objects.exists()


def test_an_experiment_that_ends_ends_the_loop_quietly(server, buffered):
    (client,) = enrolled(server, buffered, 1)

    def train(model):
        if len(ModelUpdate.objects.filter(experiment=buffered)) == 1:  # the developer stops it mid-turn
            lifecycle.experiment_set_state(experiment=buffered, state="stopped", user=buffered.developer)
        return step(model)

    result = train_loop(client, train)
    assert (result.stopped, len(result.updates)) == ("ended", 1)
    assert ModelUpdate.objects.filter(experiment=buffered).count() == 1


def test_a_server_that_cannot_be_reached_is_retried_then_given_up():
    client = Client("http://127.0.0.1:9", experiment=1, token="u.secret", retry=Retry(attempts=1), quiet=True)
    with pytest.raises(ServerUnavailable):
        train_loop(client, step, transient_pause=0, max_transient=3)


def test_fma_connect_clients_keep_working_in_an_asynchronous_experiment(server, buffered, run_round):
    """The original fma-connect calls (``WebClient``, JSON layers) push into an asynchronous experiment;
    with the buffer full the round runs, both updates fresh (s(0) = 1)."""
    (client,) = enrolled(server, buffered, 1)
    legacy = WebClient(buffered.pk, url=server, token=client.token)
    for value in (2.0, 4.0):
        layers = [np.full((4, 3), value).tolist(), [value] * 3]
        assert legacy.send_update(layers)["status"] == "pending"
    run_round(buffered.pk)
    newest = client.pull()
    # x = 0 + 1·(1·2 + 1·4)/2
    assert all(np.allclose(v, 3.0) for v in newest.weights.values())
    assert legacy.check_for_new_model_aggregate() is not None
