"""The in-process runner: rounds run in a background thread, never in the request; notifications dedupe;
deadlines wake it up; the sweep recovers what no notification covers."""

from __future__ import annotations

import threading
import time

import pytest
from aggregator_support import submit, wait_for

from fma_aggregator import runners
from fma_aggregator.inprocess import InProcessRunner
from fma_core.rounds import RoundOutcome
from fma_django.models import Event, EventKind, ModelAggregate, ModelUpdate, UpdateStatus


def test_a_burst_of_notifications_runs_an_experiment_once_at_a_time_and_once_more_after():
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def run(experiment_id: str) -> RoundOutcome:
        calls.append(experiment_id)
        if len(calls) == 1:
            entered.set()
            release.wait(60)
        return RoundOutcome("idle", experiment_id)

    runner = InProcessRunner(run=run, sweep=list, sweep_seconds=3600)
    try:
        runner.notify("7")
        assert entered.wait(60)
        for _ in range(50):  # arrive while the first round is running
            runner.notify("7")
        release.set()
        wait_for(lambda: len(runner.outcomes) == 2, what="the queued round")
        time.sleep(0.5)  # nothing else may follow
        assert calls == ["7", "7"]
    finally:
        runner.stop(timeout=60)


def test_a_deadline_wakes_the_runner_up_and_a_committed_round_is_followed_by_another_look():
    now = time.time()
    outcomes = iter(
        [
            RoundOutcome("not_ready", "e", wakeup_at=now + 0.3),
            RoundOutcome("committed", "e"),
            RoundOutcome("idle", "e"),
        ]
    )
    runner = InProcessRunner(run=lambda e: next(outcomes), sweep=list, sweep_seconds=3600)
    try:
        runner.notify("e")
        wait_for(lambda: len(runner.outcomes) == 3, what="the deadline round and the look after it")
        assert [o.status for o in runner.outcomes] == ["not_ready", "committed", "idle"]
    finally:
        runner.stop(timeout=60)


def test_the_sweep_runs_at_start_and_a_failing_round_does_not_stop_the_runner():
    def run(experiment_id: str) -> RoundOutcome:
        if experiment_id == "bad":
            raise RuntimeError("database went away")
        return RoundOutcome("idle", experiment_id)

    runner = InProcessRunner(run=run, sweep=lambda: ["bad", "good"], sweep_seconds=3600)
    try:
        runner.start()
        wait_for(lambda: runner.outcomes, what="the swept round")
        assert [o.experiment_id for o in runner.outcomes] == ["good"]
        runner.notify("good")
        wait_for(lambda: len(runner.outcomes) == 2, what="a round after the failure")
    finally:
        runner.stop(timeout=60)


def test_an_accepted_update_makes_the_background_runner_commit_the_round(inprocess, make_experiment):
    experiment = make_experiment(round_policy={"policy": "require_x_updates", "x": 3})
    first = submit(experiment, 1.0, num_examples=1)
    submit(experiment, 2.0, num_examples=2)
    assert not ModelAggregate.objects.exists()  # the policy wants three
    submit(experiment, 3.0, num_examples=3)
    aggregate = wait_for(
        lambda: ModelAggregate.objects.filter(experiment=experiment).first(), what="the round"
    )
    updates = ModelUpdate.objects.filter(experiment=experiment)
    assert {u.status for u in updates} == {UpdateStatus.CONSUMED}
    assert sorted(u.aggregate_weight for u in updates) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert aggregate.round_number == 1
    assert aggregate.aggregator == "fedavg"
    assert aggregate.duration_seconds > 0
    assert aggregate.peak_memory_bytes > 0
    kinds = list(Event.objects.filter(experiment=experiment).values_list("kind", flat=True))
    assert kinds.count(EventKind.ROUND_STARTED) == 1
    assert kinds.count(EventKind.ROUND_COMPLETED) == 1
    started = Event.objects.get(experiment=experiment, kind=EventKind.ROUND_STARTED)
    assert started.detail["updates"] == 3
    assert first.pk in set(aggregate.updates.values_list("pk", flat=True))


def test_the_request_never_runs_the_round(inprocess, make_experiment, monkeypatch):
    """The accepted update only queues the experiment: the round runs in the runner's thread."""
    threads = []
    original = runners.build_engine

    def spy(*args, **kwargs):
        engine = original(*args, **kwargs)
        run_round = engine.run_round

        def recorded(experiment_id):
            threads.append(threading.current_thread().name)
            return run_round(experiment_id)

        engine.run_round = recorded
        return engine

    monkeypatch.setattr(runners, "build_engine", spy)
    experiment = make_experiment()
    submit(experiment, 1.0)
    wait_for(lambda: ModelAggregate.objects.filter(experiment=experiment).exists(), what="the round")
    assert threads
    assert set(threads) == {"fma-inprocess-runner"}
