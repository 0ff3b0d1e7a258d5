"""Asynchronous invocations of the aggregator Lambda function (boto3 ``invoke``, ``InvocationType="Event"``).

The API uses it to say "round ready" and "check this upload"; the function uses it to fan a
sharded round out to parallel invocations of itself, and its sweep to ask for rounds and checks.
Lambda retries a failed asynchronous invocation, and the round engine's claim (or the upload
session's lock) makes a repeated one harmless.

The API's announcements (``LambdaInvoker.announcing``) are sent within the request, since a Lambda
environment is frozen once it has answered and a background thread would not run, so they have
short timeouts and no retry: an unreachable Lambda API costs a push seconds, never minutes, and the
scheduled sweep makes up for a lost announcement. The function's own fan-out keeps botocore's retries.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

from fma_aggregator.config import AggregatorConfig
from fma_core.dispatch import Dispatcher
from fma_core.errors import ConfigurationError
from fma_core.shards import RoundPlan

# Seconds; an asynchronous invocation is queued and answered (202) in milliseconds.
ANNOUNCE_CONFIG = Config(
    connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 1}
)


@cache
def lambda_client(*, announcing: bool = False) -> Any:
    """One boto3 Lambda client per process and use (region and credentials from the usual AWS variables);
    ``announcing``: the API's, with short timeouts and no retry."""
    return boto3.client("lambda", config=ANNOUNCE_CONFIG) if announcing else boto3.client("lambda")


class LambdaInvoker(Dispatcher):
    """Invokes the aggregator function asynchronously; as a round's dispatcher, one invocation per shard."""

    def __init__(self, function_name: str, *, client: Any = None) -> None:
        self.function_name = function_name
        self._client = client

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use: a round that sends nothing needs none."""
        if self._client is None:
            self._client = lambda_client()
        return self._client

    @classmethod
    def announcing(cls, config: AggregatorConfig) -> LambdaInvoker:
        """The API's invoker of ``FMA_AGGREGATOR_FUNCTION``: short timeouts, no retry."""
        if not config.lambda_function:
            raise ConfigurationError(
                "FMA_AGGREGATOR_FUNCTION must name the aggregator function for the lambda runner"
            )
        return cls(config.lambda_function, client=lambda_client(announcing=True))

    def round_ready(self, experiment_id: str) -> None:
        self.invoke({"fma": "round_ready", "experiment_id": experiment_id})

    def check_upload(self, upload_id: str) -> None:
        self.invoke({"fma": "check_upload", "upload_id": upload_id})

    def unmask_secure_round(self, round_id: str) -> None:
        self.invoke({"fma": "unmask_secure_round", "round_id": round_id})

    def send_shard(self, plan: RoundPlan, index: int) -> None:
        self.invoke({"fma": "shard", "plan": plan.to_dict(), "index": index})

    def invoke(self, payload: dict[str, Any]) -> None:
        response = self.client.invoke(
            FunctionName=self.function_name,
            InvocationType="Event",
            Payload=json.dumps(payload).encode(),
        )
        if response.get("StatusCode") != 202:
            raise RuntimeError(f"Lambda did not queue the invocation (status {response.get('StatusCode')})")
