"""Each runner checks an upload too large to check within its complete request (FMA_UPLOAD_INLINE_CHECK_BYTES):
the in-process runner in its thread, a live Celery worker on Redis, the Lambda function on the API's
asynchronous invocation, ``fma-aggregator run-once`` when the runner is ``none``; each sweep hands out
again a check left waiting by a killed worker, and the accepted update's round follows."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import threading

import pytest
from aggregator_support import celery_worker_args, service_available, wait_for, weights

from fma_aggregator import runners, tasks
from fma_aggregator.cli import main
from fma_aggregator.lambda_handler import handler
from fma_core.weights import to_bytes
from fma_django import ingestion, services
from fma_django.models import ModelAggregate, ModelUpdate, UploadSession, UploadState

from .test_lambda import FUNCTION, SCHEDULED_EVENT, AwsLambda, LambdaContext, aws  # noqa: F401 - a fixture


@pytest.fixture
def lambda_runner(request, settings) -> AwsLambda:
    """The API's runner is the aggregator function; its invocations are recorded (test_lambda's ``aws``)."""
    settings.FMA_AGGREGATOR_RUNNER = "lambda"
    return request.getfixturevalue("aws")


@pytest.fixture
def redis() -> None:
    service_available("127.0.0.1", 6379, "Redis")


def uploaded(experiment, value: float = 1.0) -> UploadSession:
    """A new client sends an update's parts through an upload session, as the API would; not completed."""
    body = to_bytes(weights(value))
    client, _ = services.client_register(experiment=experiment)
    session, _ = ingestion.upload_start(
        experiment=experiment, client=client, size=len(body), sha256=hashlib.sha256(body).hexdigest()
    )
    for number in range(1, session.part_count + 1):
        offset, size = session.part_range(number)
        part = io.BytesIO(body[offset : offset + size])
        ingestion.upload_part_put(session=session, number=number, stream=part, length=size)
    return session


def checking(session: UploadSession) -> UploadSession:
    """Complete the upload as the API does: it must be left to a runner."""
    completion = ingestion.upload_complete(session=session)
    assert (completion.update, completion.session.state) == (None, UploadState.CHECKING)
    return completion.session


def left_checking(session: UploadSession) -> UploadSession:
    """A worker was killed mid-check: its transaction rolled back, and nobody will announce the session."""
    UploadSession.objects.filter(pk=session.pk).update(state=UploadState.CHECKING)
    return session


def state(session: UploadSession) -> str:
    return UploadSession.objects.get(pk=session.pk).state


def round_committed(experiment):
    return lambda: ModelAggregate.objects.filter(experiment=experiment).first()


def test_the_inprocess_runner_checks_in_its_thread_and_the_round_follows(
    inprocess, checked_later, make_experiment, monkeypatch
):
    threads = []
    original = runners.run_check

    def spy(upload_id: str) -> dict:
        threads.append(threading.current_thread().name)
        return original(upload_id)

    monkeypatch.setattr(runners, "run_check", spy)
    experiment = make_experiment()
    session = checking(uploaded(experiment))
    wait_for(lambda: state(session) == UploadState.COMPLETED, what="the check")
    aggregate = wait_for(round_committed(experiment), what="the round of the accepted update")
    update = UploadSession.objects.get(pk=session.pk).update
    assert list(aggregate.updates.values_list("pk", flat=True)) == [update.pk]
    assert set(threads) == {"fma-inprocess-runner"}


def test_the_inprocess_runners_sweep_checks_an_upload_a_killed_worker_left(
    inprocess, checked_later, make_experiment
):
    session = left_checking(uploaded(make_experiment()))
    runners.inprocess_runner().start()  # the runner sweeps as soon as it starts
    wait_for(lambda: state(session) == UploadState.COMPLETED, what="the swept check")
    assert ModelUpdate.objects.count() == 1


@pytest.mark.usefixtures("require_postgresql")
def test_a_celery_worker_checks_the_upload_and_its_sweep_recovers_one_left_waiting(
    redis, settings, checked_later, make_experiment, worker_env, processes, tmp_path
):
    worker = processes(
        celery_worker_args("checks", beat=False, tmp_path=tmp_path),
        worker_env(FMA_AGGREGATOR_RUNNER="celery"),
    )
    settings.FMA_AGGREGATOR_RUNNER = "celery"
    experiment = make_experiment(round_policy={"policy": "require_x_updates", "x": 2})
    first = checking(uploaded(experiment, 1.0))
    wait_for(lambda: state(first) == UploadState.COMPLETED, what=f"the Celery check; log:\n{worker.output()}")
    assert "fma.check_upload" in worker.output()

    second = left_checking(uploaded(experiment, 2.0))
    tasks.sweep()  # the beat's task, run here: it queues the check again
    wait_for(lambda: state(second) == UploadState.COMPLETED, what="the swept check")
    aggregate = wait_for(round_committed(experiment), what="the round of both updates")
    assert aggregate.updates.count() == 2


def test_the_api_invokes_the_function_to_check_and_the_invocation_checks(
    lambda_runner, checked_later, make_experiment
):
    experiment = make_experiment()
    session = uploaded(experiment)
    lambda_runner.expect_invocations(1)
    checking(session)
    [invocation] = lambda_runner.take()
    assert invocation == {
        "FunctionName": FUNCTION,
        "payload": {"fma": "check_upload", "upload_id": str(session.uuid)},
    }
    assert not ModelUpdate.objects.exists()  # nothing was checked in the request

    lambda_runner.expect_invocations(1)  # the accepted update announces its round
    result = handler(invocation["payload"], LambdaContext())
    update = ModelUpdate.objects.get()
    assert result == {
        "status": "completed",
        "upload_id": str(session.uuid),
        "update_id": update.pk,
        "reason": "",
    }
    [round_ready] = lambda_runner.take()
    assert round_ready["payload"] == {"fma": "round_ready", "experiment_id": str(experiment.pk)}
    # Lambda delivers asynchronous events at least once: the repeat finds nothing left to do
    assert handler(invocation["payload"], LambdaContext())["status"] == "skipped"


def test_the_scheduled_sweep_invokes_a_check_a_killed_invocation_left(lambda_runner, make_experiment):
    session = left_checking(uploaded(make_experiment()))
    lambda_runner.expect_invocations(1)
    assert handler(SCHEDULED_EVENT, LambdaContext())["uploads_checking"] == 1
    [invocation] = lambda_runner.take()
    assert invocation["payload"] == {"fma": "check_upload", "upload_id": str(session.uuid)}
    lambda_runner.expect_invocations(1)
    assert handler(invocation["payload"], LambdaContext())["status"] == "completed"
    assert [i["payload"]["fma"] for i in lambda_runner.take()] == ["round_ready"]


def test_with_runner_none_nothing_is_sent_and_run_once_checks_then_runs_the_round(
    settings, checked_later, make_experiment, capsys
):
    settings.FMA_AGGREGATOR_RUNNER = "none"
    experiment = make_experiment()
    session = checking(uploaded(experiment))
    assert state(session) == UploadState.CHECKING  # nobody was told
    assert main(["run-once", "--json"]) == 0
    assert state(session) == UploadState.COMPLETED
    [outcome] = json.loads(capsys.readouterr().out)
    assert (outcome["experiment_id"], outcome["status"]) == (str(experiment.pk), "committed")


@pytest.mark.usefixtures("require_postgresql")
def test_a_standalone_workers_sweep_checks_an_upload_left_waiting_even_with_runner_none(
    make_experiment, worker_env, processes
):
    # `fma-aggregator worker` beside an API whose runner is none, sharing its environment: nobody is
    # notified, so the worker's own sweep must find the upload (and then the round) by itself.
    experiment = make_experiment()
    session = left_checking(uploaded(experiment))
    worker = processes(
        [sys.executable, "-m", "fma_aggregator.cli", "worker", "--sweep-seconds", "1"],
        worker_env(FMA_AGGREGATOR_RUNNER="none"),
    )
    wait_for(
        lambda: state(session) == UploadState.COMPLETED,
        what=f"the swept check; worker log:\n{worker.output()}",
    )
    aggregate = wait_for(round_committed(experiment), what="the round of the accepted update")
    assert list(aggregate.updates.values_list("pk", flat=True)) == [UploadSession.objects.get().update_id]
