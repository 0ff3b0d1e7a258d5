"""A broker outage never holds or fails a push (issue 13 item 15): the API (``fma-server``, in its own
process, ``FMA_AGGREGATOR_RUNNER=celery``) stores every update and answers at once whether its broker
is down (a closed port) or hangs (accepts connections and never answers); the announcements it could
not send are logged, and once a broker is back the beat's sweep runs the round. With the broker up,
the announcement itself reaches a worker."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests
from aggregator_support import (
    Process,
    SilentBroker,
    celery_worker_args,
    free_port,
    service_available,
    wait_for,
    weights,
)

from fma_client import Client, Retry
from fma_django.models import ModelAggregate, ModelUpdate, UpdateStatus

pytestmark = pytest.mark.usefixtures("require_postgresql")

BROKERS = {
    "redis": ("redis://127.0.0.1:{port}/0", 6379, "Redis"),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:{port}//", 5672, "RabbitMQ"),
}


def broker_url(kind: str, port: int) -> str:
    return BROKERS[kind][0].format(port=port)


@pytest.fixture(params=sorted(BROKERS))
def broker(request) -> str:
    """The kind of broker under test; the real one must be up, for when it is "back"."""
    _, port, name = BROKERS[request.param]
    service_available("127.0.0.1", port, name)
    return request.param


@pytest.fixture
def silent_broker() -> Iterator[SilentBroker]:
    hung = SilentBroker()
    yield hung
    hung.close()


@dataclass
class Api:
    url: str
    server: Process

    def log(self) -> str:
        return self.server.output()


@pytest.fixture
def api(worker_env, processes) -> Callable[..., Api]:
    """Start fma-server (one worker) with the Celery runner and this environment."""

    def start(**env: str) -> Api:
        port = free_port()
        server = processes(
            [sys.executable, "-m", "fma_service"],
            worker_env(FMA_BIND=f"127.0.0.1:{port}", FMA_WORKERS="1", FMA_AGGREGATOR_RUNNER="celery", **env),
        )
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert server.proc.poll() is None, f"fma-server ended:\n{server.output()}"
            try:
                return requests.get(f"{url}/api/v1/", timeout=10).status_code < 500
            except requests.ConnectionError:
                return False

        wait_for(answers, what="fma-server to answer")
        return Api(url, server)

    return start


def push(api: Api, experiment, value: float) -> dict:
    """A new client enrolls and pushes one update, over HTTP; one attempt, no retry to hide a stall."""
    with Client.enroll(
        api.url, experiment.pk, quiet=True, timeout=(10, 60), retry=Retry(attempts=1)
    ) as client:
        return client.push(weights(value), num_examples=1)


def stored(experiment) -> list[ModelUpdate]:
    return list(ModelUpdate.objects.filter(experiment=experiment, status=UpdateStatus.PENDING))


def committed(experiment):
    return lambda: ModelAggregate.objects.filter(experiment=experiment).first()


def test_a_hung_broker_holds_no_push_and_the_sweep_runs_the_round_once_a_broker_is_back(
    broker, silent_broker, api, make_experiment, worker_env, processes, tmp_path
):
    # A timeout longer than the test: an announcement made in the request would hold the push that long.
    server = api(FMA_BROKER_URL=broker_url(broker, silent_broker.port), FMA_BROKER_TIMEOUT="3600")
    experiment = make_experiment(round_policy={"policy": "require_x_updates", "x": 2})
    first = push(server, experiment, 1.0)
    wait_for(lambda: silent_broker.connections, what="the API to announce the round to the broker")
    second = push(server, experiment, 2.0)
    assert {u.pk for u in stored(experiment)} == {first["id"], second["id"]}
    # Both pushes were answered while the announcement still waits on the broker for its answer.
    assert silent_broker.still_open() >= 1

    worker = processes(
        celery_worker_args("back", beat=True, tmp_path=tmp_path),
        worker_env(FMA_BROKER_URL=broker_url(broker, BROKERS[broker][1])),
    )
    aggregate = wait_for(committed(experiment), what=f"the swept round; worker log:\n{worker.output()}")
    assert sorted(aggregate.updates.values_list("pk", flat=True)) == sorted([first["id"], second["id"]])


def test_a_broker_that_is_down_fails_no_push_the_lost_announcement_is_logged_and_swept_up(
    broker, api, make_experiment, worker_env, processes, tmp_path
):
    server = api(FMA_BROKER_URL=broker_url(broker, free_port()))
    experiment = make_experiment()
    update = push(server, experiment, 1.0)
    assert [u.pk for u in stored(experiment)] == [update["id"]]
    wait_for(lambda: "the sweep will find it" in server.log(), what="the lost announcement in the API's log")

    worker = processes(
        celery_worker_args("back", beat=True, tmp_path=tmp_path),
        worker_env(FMA_BROKER_URL=broker_url(broker, BROKERS[broker][1])),
    )
    aggregate = wait_for(committed(experiment), what=f"the swept round; worker log:\n{worker.output()}")
    assert list(aggregate.updates.values_list("pk", flat=True)) == [update["id"]]


def test_with_the_broker_up_the_api_announces_the_round_to_a_worker(
    broker, api, make_experiment, worker_env, processes, tmp_path
):
    live = broker_url(broker, BROKERS[broker][1])
    worker = processes(
        celery_worker_args("up", beat=False, tmp_path=tmp_path), worker_env(FMA_BROKER_URL=live)
    )
    server = api(FMA_BROKER_URL=live)
    experiment = make_experiment()
    update = push(server, experiment, 1.0)
    aggregate = wait_for(committed(experiment), what=f"the announced round; worker log:\n{worker.output()}")
    assert list(aggregate.updates.values_list("pk", flat=True)) == [update["id"]]
    assert "fma.run_round" in worker.output()
