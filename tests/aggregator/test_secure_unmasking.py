"""Each runner sums a secure round once its last share is in, never the request that brought it: the
in-process runner in its thread, a live Celery worker (and its sweep, for a round left summing), the
Lambda function on the API's asynchronous invocation (and the scheduled sweep's), ``fma-aggregator
run-once`` when the runner is ``none``."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from aggregator_support import celery_worker_args, service_available, wait_for, weights

from fma_aggregator import checks, runners, tasks
from fma_aggregator.cli import main
from fma_aggregator.lambda_handler import handler
from fma_core.secagg import ClientSession, PublicKeys, RoundParams
from fma_django import secure_rounds, services
from fma_django.models import ModelAggregate, SecureRoundRow

from .test_lambda import FUNCTION, SCHEDULED_EVENT, AwsLambda, LambdaContext, aws  # noqa: F401 - a fixture


@pytest.fixture
def lambda_runner(request, settings) -> AwsLambda:
    settings.FMA_AGGREGATOR_RUNNER = "lambda"
    return request.getfixturevalue("aws")


def shares_in(experiment) -> int:
    """Three clients run every stage through the services, as the API does; the round's id."""
    clients = [services.client_register(experiment=experiment)[0] for _ in range(3)]
    view = secure_rounds.secure_round_get(experiment=experiment, client=clients[0])
    round_id = view["id"]
    sessions = {c.pk: ClientSession(str(c.uuid), RoundParams.from_json(view["params"])) for c in clients}

    def step(client, stage: str, payload: dict) -> dict:
        return secure_rounds.secure_round_submit(
            experiment=experiment, client=client, round_id=round_id, stage=stage, payload=payload
        )

    def seen(client) -> dict:
        return secure_rounds.secure_round_get(experiment=experiment, client=client, round_id=round_id)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    for c in clients:
        keys = sessions[c.pk].advertise()
        step(c, "advertise", {"encryption": b64(keys.encryption), "masking": b64(keys.masking)})
    for c in clients:
        roster = {
            j: PublicKeys(base64.b64decode(e), base64.b64decode(m)) for j, (e, m) in seen(c)["roster"].items()
        }
        step(c, "share_keys", {"shares": {j: b64(ct) for j, ct in sessions[c.pk].share_keys(roster).items()}})
    for c in clients:
        view = seen(c)
        sessions[c.pk].receive_shares({j: base64.b64decode(ct) for j, ct in view["inbox"].items()})
        update = weights(0.5)
        blocks = (np.asarray(update[n], dtype=np.float64).ravel() for n in view["tensors"])
        body = b"".join(b.astype("<u8").tobytes() for b in sessions[c.pk].masked_input(blocks, 1))
        secure_rounds.secure_round_masked_input(
            experiment=experiment, client=c, round_id=round_id, stream=io.BytesIO(body), size=len(body)
        )
    for c in clients:
        revealed = sessions[c.pk].unmask(seen(c)["survivors"])
        step(c, "unmasking", {"shares": [[s.owner, s.kind, b64(s.value)] for s in revealed]})
    return round_id


def stage(round_id: int) -> str:
    return SecureRoundRow.objects.get(pk=round_id).stage


@pytest.fixture
def secure(make_experiment):
    return make_experiment(secure_aggregation={"stage_seconds": 60, "clip": 4.0})


def test_the_inprocess_runner_sums_in_its_thread(inprocess, secure, monkeypatch):
    threads = []
    original = runners.run_unmask

    def spy(round_id: str) -> dict:
        threads.append(threading.current_thread().name)
        return original(round_id)

    monkeypatch.setattr(runners, "run_unmask", spy)
    round_id = shares_in(secure)
    wait_for(lambda: stage(round_id) == "unmasked", what="the in-process sum")
    assert set(threads) == {"fma-inprocess-runner"}
    assert ModelAggregate.objects.get(experiment=secure).round_number == 1


@pytest.mark.usefixtures("require_postgresql")
def test_a_celery_worker_sums_the_round_and_its_sweep_hands_out_one_left_summing(
    settings, make_experiment, worker_env, processes, tmp_path, monkeypatch
):
    service_available("127.0.0.1", 6379, "Redis")
    settings.FMA_AGGREGATOR_RUNNER = "celery"
    worker = processes(
        celery_worker_args("secure", beat=False, tmp_path=tmp_path),
        worker_env(FMA_AGGREGATOR_RUNNER="celery"),
    )
    first = make_experiment(secure_aggregation={"stage_seconds": 60, "clip": 4.0})
    round_id = shares_in(first)
    wait_for(lambda: stage(round_id) == "unmasked", what=f"the Celery sum; log:\n{worker.output()}")
    assert "fma.unmask_secure_round" in worker.output()

    second = make_experiment(secure_aggregation={"stage_seconds": 60, "clip": 4.0})
    lost: list[int] = []  # the announcement is lost (a process killed right after the commit)
    monkeypatch.setattr(secure_rounds, "announce_secure_round_unmask_requested", lost.append)
    left = shares_in(second)
    monkeypatch.undo()
    assert lost == [left]
    assert stage(left) == "summing"
    tasks.sweep()  # the beat's task, run here: it queues the sum again
    wait_for(lambda: stage(left) == "unmasked", what=f"the swept sum; log:\n{worker.output()}")
    assert ModelAggregate.objects.filter(experiment__in=[first, second]).count() == 2


def test_the_api_invokes_the_function_to_sum_and_the_sweep_invokes_it_again(lambda_runner, secure):
    lambda_runner.expect_invocations(1)
    round_id = shares_in(secure)
    [invocation] = lambda_runner.take()
    assert invocation == {
        "FunctionName": FUNCTION,
        "payload": {"fma": "unmask_secure_round", "round_id": str(round_id)},
    }
    assert stage(round_id) == "summing"  # nothing was summed in the request
    lambda_runner.expect_invocations(
        1
    )  # an invocation lost, or killed: the scheduled sweep hands it out again
    assert handler(SCHEDULED_EVENT, LambdaContext())["secure_rounds_summing"] == 1
    [again] = lambda_runner.take()
    assert again["payload"] == invocation["payload"]
    result = handler(invocation["payload"], LambdaContext())
    aggregate = ModelAggregate.objects.get(experiment=secure)
    assert result == {"status": "unmasked", "round_id": round_id, "aggregate_id": aggregate.pk, "reason": ""}
    # Lambda delivers asynchronous events at least once: the repeat finds nothing left to do
    assert handler(again["payload"], LambdaContext())["status"] == "skipped"


def test_with_runner_none_nothing_is_sent_and_run_once_sums(settings, secure, capsys):
    settings.FMA_AGGREGATOR_RUNNER = "none"
    round_id = shares_in(secure)
    assert stage(round_id) == "summing"
    assert main(["run-once", "--json"]) == 0
    assert stage(round_id) == "unmasked"
    assert checks.run_unmask(round_id)["status"] == "skipped"
