"""Asynchronous invocations of the aggregator Lambda function (boto3 ``invoke``, ``InvocationType="Event"``).

The API uses it to say "round ready" and "check this upload"; the function uses it to fan a
sharded round out to parallel invocations of itself, and its sweep to ask for rounds and checks.
Lambda retries a failed asynchronous invocation, and the round engine's claim (or the upload
session's lock) makes a repeated one harmless.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import boto3

from fma_aggregator.config import AggregatorConfig
from fma_core.errors import ConfigurationError
from fma_core.shards import RoundPlan


@cache
def lambda_client() -> Any:
    """One boto3 Lambda client per process (region and credentials from the usual AWS variables)."""
    return boto3.client("lambda")


class LambdaInvoker:
    def __init__(self, function_name: str, *, client: Any = None) -> None:
        self.function_name = function_name
        self.client = client or lambda_client()

    @classmethod
    def from_config(cls, config: AggregatorConfig) -> LambdaInvoker:
        if not config.lambda_function:
            raise ConfigurationError(
                "FMA_AGGREGATOR_FUNCTION must name the aggregator function for the lambda runner"
            )
        return cls(config.lambda_function)

    def round_ready(self, experiment_id: str) -> None:
        self.invoke({"fma": "round_ready", "experiment_id": experiment_id})

    def check_upload(self, upload_id: str) -> None:
        self.invoke({"fma": "check_upload", "upload_id": upload_id})

    def shard(self, plan: RoundPlan, index: int) -> None:
        self.invoke({"fma": "shard", "plan": plan.to_dict(), "index": index})

    def invoke(self, payload: dict[str, Any]) -> None:
        response = self.client.invoke(
            FunctionName=self.function_name,
            InvocationType="Event",
            Payload=json.dumps(payload).encode(),
        )
        if response.get("StatusCode") != 202:
            raise RuntimeError(f"Lambda did not queue the invocation (status {response.get('StatusCode')})")
