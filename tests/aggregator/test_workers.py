"""Live workers in their own processes, on PostgreSQL and the local weight store: Celery on Redis and on
RabbitMQ, a sharded round as shard tasks over two workers, and workers SIGKILLed in the middle of a round."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from aggregator_support import celery_worker_args, service_available, submit, wait_for

from fma_aggregator.engine import build_engine
from fma_django.models import Event, EventKind, ModelAggregate, ModelUpdate, RoundLease, UpdateStatus

pytestmark = pytest.mark.usefixtures("require_postgresql")

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
SHAPES = {"embedding": (64, 32), "hidden": (32, 32), "head": (32, 4), "bias": (4,)}


@pytest.fixture
def redis() -> None:
    service_available("127.0.0.1", 6379, "Redis")


@pytest.fixture
def rabbitmq() -> None:
    service_available("127.0.0.1", 5672, "RabbitMQ")


def committed(experiment, count: int = 1):
    def check():
        aggregates = list(ModelAggregate.objects.filter(experiment=experiment))
        return aggregates if len(aggregates) >= count else None

    return check


def assert_each_update_consumed_once(experiment, aggregate: ModelAggregate) -> None:
    updates = ModelUpdate.objects.filter(experiment=experiment)
    assert {u.status for u in updates} == {UpdateStatus.CONSUMED}
    assert {u.aggregate_id for u in updates} == {aggregate.pk}
    assert ModelAggregate.objects.filter(experiment=experiment).count() == 1


def test_the_api_enqueues_the_round_and_a_celery_worker_on_redis_commits_it(
    redis, settings, make_experiment, worker_env, processes, tmp_path
):
    worker = processes(celery_worker_args("api", beat=False, tmp_path=tmp_path), worker_env())
    settings.FMA_AGGREGATOR_RUNNER = "celery"
    experiment = make_experiment(round_policy={"policy": "require_x_updates", "x": 2})
    submit(experiment, 1.0, num_examples=1)
    submit(experiment, 2.0, num_examples=3)
    [aggregate] = wait_for(committed(experiment), what=f"the Celery round; worker log:\n{worker.output()}")
    assert_each_update_consumed_once(experiment, aggregate)
    assert sorted(aggregate.updates.values_list("aggregate_weight", flat=True)) == [0.25, 0.75]
    assert "fma.run_round" in worker.output()


def test_a_sharded_round_is_one_task_per_shard_over_two_workers_and_bit_identical(
    redis, settings, make_experiment, worker_env, processes, tmp_path
):
    reference = make_experiment(name="reference", shapes=SHAPES)
    experiment = make_experiment(
        name="sharded", shapes=SHAPES, round_policy={"policy": "require_x_updates", "x": 3}
    )
    for value, examples in ((1.0, 5), (2.0, 10), (3.0, 20)):
        submit(reference, value, num_examples=examples, shapes=SHAPES)
    expected = build_engine().run_round(str(reference.pk)).aggregate

    env = worker_env(FMA_SHARD_BYTES="6000")
    workers = [processes(celery_worker_args(f"shard{n}", beat=False, tmp_path=tmp_path), env) for n in (1, 2)]
    settings.FMA_AGGREGATOR_RUNNER = "celery"
    for value, examples in ((1.0, 5), (2.0, 10), (3.0, 20)):
        submit(experiment, value, num_examples=examples, shapes=SHAPES)
    logs = lambda: "\n".join(w.output() for w in workers)  # noqa: E731
    [aggregate] = wait_for(committed(experiment), what="the sharded round", timeout=180)
    assert aggregate.content_id == expected.draft.content_id
    assert_each_update_consumed_once(experiment, aggregate)
    # three shards (the embedding cut in two, then the rest), one task each; the last one committed
    assert len(re.findall(r"Task fma\.compute_shard\[[^\]]+\] succeeded", logs())) == 3
    for folder in ("shards", ".uploads"):  # the shards' records and the aggregate's upload are gone
        assert not [p for p in Path(settings.FMA_WEIGHTS_DIR, folder).rglob("*") if p.is_file()]


def test_beat_sweeps_and_a_worker_on_rabbitmq_runs_the_round(
    rabbitmq, make_experiment, worker_env, processes, tmp_path
):
    experiment = make_experiment()  # the API notifies no one (runner "none"): only the sweep finds it
    submit(experiment, 1.0)
    worker = processes(
        celery_worker_args("rabbit", beat=True, tmp_path=tmp_path),
        worker_env(FMA_BROKER_URL=RABBITMQ_URL),
    )
    [aggregate] = wait_for(committed(experiment), what=f"the swept round; worker log:\n{worker.output()}")
    assert_each_update_consumed_once(experiment, aggregate)
    assert "amqp://guest:**@127.0.0.1:5672//" in worker.output()


def kill_mid_round_then_recover(experiment, first, second, marker: Path) -> ModelAggregate:
    """Wait until ``first`` is inside the round (it holds the lease and reads updates), SIGKILL it,
    start ``second`` and check that it completes the round once the dead worker's lease expires."""
    wait_for(marker.exists, what=f"the first worker to start the round; its log:\n{first.output()}")
    lease = RoundLease.objects.get(experiment=experiment)
    assert lease.token, "the first worker holds the round's lease"
    assert not ModelAggregate.objects.filter(experiment=experiment).exists()
    first.kill()
    assert ModelUpdate.objects.filter(experiment=experiment, status=UpdateStatus.PENDING).count() == 3
    worker = second()
    [aggregate] = wait_for(committed(experiment), what=f"the round to be taken over; log:\n{worker.output()}")
    assert_each_update_consumed_once(experiment, aggregate)
    starts = Event.objects.filter(experiment=experiment, kind=EventKind.ROUND_STARTED)
    assert len({e.detail["worker"] for e in starts}) == 2  # the dead worker's claim, then the survivor's
    assert aggregate.round_number == 1
    return aggregate


SLOW = {
    "FMA_WEIGHT_STORE": "slow_store.SlowWeightStore",
    "FMA_TEST_SLOW_SECONDS": "60",
    "FMA_LEASE_SECONDS": "4",
}


def test_a_celery_worker_killed_mid_round_loses_nothing_and_counts_nothing_twice(
    redis, settings, make_experiment, worker_env, processes, tmp_path
):
    marker = tmp_path / "round-started"
    fast_redelivery = {"FMA_BROKER_VISIBILITY_TIMEOUT": "10"}
    doomed = processes(
        celery_worker_args("doomed", beat=False, tmp_path=tmp_path),
        worker_env(FMA_TEST_MARKER=str(marker), **SLOW, **fast_redelivery),
    )
    settings.FMA_AGGREGATOR_RUNNER = "celery"
    experiment = make_experiment(round_policy={"policy": "require_x_updates", "x": 3})
    for value in (1.0, 2.0, 3.0):
        submit(experiment, value)
    kill_mid_round_then_recover(
        experiment,
        doomed,
        lambda: processes(
            celery_worker_args("survivor", beat=True, tmp_path=tmp_path), worker_env(**fast_redelivery)
        ),
        marker,
    )


def test_the_in_process_runner_killed_mid_round_loses_nothing_and_counts_nothing_twice(
    make_experiment, worker_env, processes, tmp_path
):
    marker = tmp_path / "round-started"
    worker = [sys.executable, "-m", "fma_aggregator.cli", "worker", "--sweep-seconds", "1"]
    experiment = make_experiment(round_policy={"policy": "require_x_updates", "x": 3})
    for value in (1.0, 2.0, 3.0):
        submit(experiment, value)
    doomed = processes(worker, worker_env(FMA_TEST_MARKER=str(marker), **SLOW))
    kill_mid_round_then_recover(experiment, doomed, lambda: processes(worker, worker_env()), marker)
