"""The Lambda handler, fed the events AWS sends it (EventBridge schedules, asynchronous invocations),
and the API-side runner that invokes it, against botocore's Stubber: no AWS here, the rest is real."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from aggregator_support import HangingUp, submit, use_lambda_api
from botocore.stub import ANY, Stubber
from django.contrib.auth.models import User

from fma_aggregator import lambda_invoke
from fma_aggregator.lambda_handler import handler
from fma_django.models import Event, EventKind, ModelAggregate, ModelUpdate, UpdateStatus

FUNCTION = "fma-aggregator"

# EventBridge's "Scheduled Event", as AWS documents and delivers it.
SCHEDULED_EVENT = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-11-26T03:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/fma-aggregator-sweep"],
    "detail": {},
}


@dataclass
class LambdaContext:
    """The attributes of the context object Lambda passes that the handler may read."""

    function_name: str = FUNCTION
    invoked_function_arn: str = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}"
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"


class AwsLambda:
    """A real boto3 Lambda client whose calls are answered by botocore's Stubber; records the payloads sent."""

    def __init__(self) -> None:
        self.client = boto3.client(
            "lambda", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        )
        self.stubber = Stubber(self.client)
        self.sent: list[dict] = []
        self.client.meta.events.register("provide-client-params.lambda.Invoke", self._record)

    def expect_invocations(self, count: int) -> None:
        for _ in range(count):
            self.stubber.add_response(
                "invoke",
                {"StatusCode": 202},
                {"FunctionName": ANY, "InvocationType": "Event", "Payload": ANY},
            )

    def take(self) -> list[dict]:
        sent, self.sent = self.sent, []
        return sent

    def _record(self, params: dict, **kwargs: object) -> None:
        self.sent.append({"FunctionName": params["FunctionName"], "payload": json.loads(params["Payload"])})


@pytest.fixture
def aws(monkeypatch) -> Iterator[AwsLambda]:
    monkeypatch.setenv("FMA_AGGREGATOR_FUNCTION", FUNCTION)
    fake = AwsLambda()
    monkeypatch.setattr(lambda_invoke, "lambda_client", lambda **kwargs: fake.client)
    with fake.stubber:
        yield fake
        fake.stubber.assert_no_pending_responses()


def test_the_api_invokes_the_function_asynchronously_and_the_invocation_runs_the_round(
    settings, aws, make_experiment
):
    settings.FMA_AGGREGATOR_RUNNER = "lambda"
    experiment = make_experiment()
    aws.expect_invocations(1)
    update = submit(experiment, 1.0)
    [invocation] = aws.take()
    assert invocation == {
        "FunctionName": FUNCTION,
        "payload": {"fma": "round_ready", "experiment_id": str(experiment.pk)},
    }
    assert ModelUpdate.objects.get(pk=update.pk).status == UpdateStatus.PENDING  # nothing ran in the request

    result = handler(invocation["payload"], LambdaContext())
    assert result["status"] == "committed"
    aggregate = ModelAggregate.objects.get(pk=int(result["aggregate_id"]))
    assert list(aggregate.updates.values_list("pk", flat=True)) == [update.pk]
    # Lambda delivers asynchronous events at least once: the repeat finds nothing left to do
    assert handler(invocation["payload"], LambdaContext())["status"] == "idle"
    assert ModelAggregate.objects.count() == 1


def test_a_scheduled_event_sweeps_every_experiment_with_pending_updates(aws, make_experiment):
    waiting = make_experiment(name="waiting")
    deadline = make_experiment(name="deadline", round_policy={"policy": "deadline", "seconds": 3600})
    make_experiment(name="quiet")
    submit(waiting, 1.0)
    submit(deadline, 2.0)
    aws.expect_invocations(2)
    assert handler(SCHEDULED_EVENT, LambdaContext()) == {
        "status": "swept",
        "round_ready": [str(waiting.pk), str(deadline.pk)],
        "uploads_expired": 0,
        "uploads_checking": 0,
        "update_weights_removed": 0,
        "orphans_removed": 0,
        "secure_rounds_advanced": 0,
        "secure_rounds_summing": 0,
    }
    invocations = aws.take()
    assert {i["FunctionName"] for i in invocations} == {FUNCTION}
    results = [handler(i["payload"], LambdaContext()) for i in invocations]
    assert [r["status"] for r in results] == ["committed", "not_ready"]
    assert results[1]["wakeup_at"] > 0  # the deadline, an hour after the first update


def test_the_original_fma_per_model_schedule_runs_that_experiments_round(aws, make_experiment):
    experiment = make_experiment()
    submit(experiment, 1.0)
    event = {**SCHEDULED_EVENT, "detail": {"model_id": experiment.pk}}
    assert handler(event, LambdaContext())["status"] == "committed"


SHAPES = {"embedding": (64, 32), "hidden": (32, 32), "head": (32, 4), "bias": (4,)}


def test_a_large_model_fans_out_to_shard_invocations_and_commits_once_bit_identical(
    aws, monkeypatch, make_experiment
):
    reference = make_experiment(name="reference", shapes=SHAPES)
    sharded = make_experiment(name="sharded", shapes=SHAPES)
    for value, examples in ((1.0, 10), (2.0, 30), (3.0, 60)):
        submit(reference, value, num_examples=examples, shapes=SHAPES)
        submit(sharded, value, num_examples=examples, shapes=SHAPES)
    expected = handler({"fma": "round_ready", "experiment_id": str(reference.pk)}, LambdaContext())

    monkeypatch.setenv("FMA_SHARD_BYTES", "6000")  # the model is 12.5 KiB: three shards
    aws.expect_invocations(3)
    started = handler({"fma": "round_ready", "experiment_id": str(sharded.pk)}, LambdaContext())
    assert started["status"] == "sharded"
    shards = aws.take()
    assert len(shards) == started["shards"] == 3
    assert {s["payload"]["fma"] for s in shards} == {"shard"}

    *waiting, result = [handler(s["payload"], LambdaContext()) for s in shards]
    assert [w["status"] for w in waiting] == ["shard_done"] * (len(shards) - 1)
    assert result["status"] == "committed"  # the last shard to finish commits
    assert handler(shards[0]["payload"], LambdaContext())["status"] == "idle"  # a retried invocation

    aggregate = ModelAggregate.objects.get(pk=int(result["aggregate_id"]))
    assert aggregate.content_id == ModelAggregate.objects.get(pk=int(expected["aggregate_id"])).content_id
    assert aggregate.updates.count() == 3
    assert aggregate.peak_memory_bytes > 0
    assert ModelAggregate.objects.filter(experiment=sharded).count() == 1


def test_manage_events_run_django_management_commands(monkeypatch, transactional_db):
    migrated = handler({"manage": "migrate"}, LambdaContext())
    assert migrated["status"] == "ok"
    assert "No migrations to apply" in migrated["output"]
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a-long-admin-password")
    handler(
        {"manage": ["createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com"]},
        LambdaContext(),
    )
    admin = User.objects.get(username="admin")
    assert admin.is_superuser
    assert admin.check_password("a-long-admin-password")


def test_an_unknown_event_is_refused(transactional_db):
    with pytest.raises(ValueError, match="does not know this event"):
        handler({"Records": []}, LambdaContext())


def test_a_failed_round_is_in_the_event_log_with_its_reason(aws, make_experiment, caplog):
    experiment = make_experiment(aggregator="trimmed_mean", aggregator_params={"trim_fraction": 0.45})
    submit(experiment, 1.0)
    type(experiment).objects.filter(pk=experiment.pk).update(aggregator_params={"trim_fraction": 0.9})
    result = handler({"fma": "round_ready", "experiment_id": str(experiment.pk)}, LambdaContext())
    assert result["status"] == "failed"
    # the line terraform_deploy's alarm counts (a metric filter on the phrase "round failed")
    [logged] = [r for r in caplog.records if "round failed" in r.getMessage()]
    assert logged.levelname == "ERROR"
    assert f"experiment {experiment.pk}:" in logged.getMessage()
    failed = Event.objects.get(experiment=experiment, kind=EventKind.ROUND_FAILED)
    assert "trim_fraction" in failed.detail["reason"]
    assert ModelUpdate.objects.get(experiment=experiment).status == UpdateStatus.PENDING


def test_an_unreachable_lambda_api_fails_no_push_and_is_tried_once(settings, monkeypatch, make_experiment):
    """The API announces within the request (a frozen Lambda environment runs no background thread), so
    the invocation has short timeouts and no retry: the sweep, not the push, makes up for a lost one."""
    lambda_api = HangingUp()
    use_lambda_api(monkeypatch, settings, lambda_api.url, FUNCTION)
    experiment = make_experiment()
    try:
        update = submit(experiment, 1.0)
    finally:
        lambda_invoke.lambda_client.cache_clear()
        lambda_api.close()
    assert ModelUpdate.objects.get().pk == update.pk
    assert lambda_api.attempts == 1
