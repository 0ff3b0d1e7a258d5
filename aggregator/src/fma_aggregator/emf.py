"""FMA's figures on AWS Lambda: CloudWatch's embedded metric format (EMF), one JSON log line each.

A Lambda function's standard output is its log stream, and CloudWatch turns each line shaped
like this into metric values, with no API call and no agent (``FMA_METRICS=emf``, the default on
Lambda; the namespace is ``FMA_METRICS_NAMESPACE``). The same observations as Prometheus counts on
servers (``fma_django.telemetry``), under CloudWatch names; the deployment's alarms
(``terraform_deploy/monitoring.tf``, ``modules/monitoring``) watch ``RoundsFailed`` and ``Ready``.

Why no library: the format is one JSON object per line; AWS's Python library for it needs aiohttp
and an event loop for its agent sink, which a Lambda function does not use.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from django.conf import settings

from fma_django.telemetry import Observation

# each observation counts itself once, and gives its duration and size where it has them
_COUNTS = {
    "round_completed": "RoundsCompleted",
    "round_failed": "RoundsFailed",
    "update_accepted": "UpdatesAccepted",
    "update_rejected": "UpdatesRejected",
    "lease_taken_over": "LeaseTakeovers",
    "upload_expired": "UploadsExpired",
    "sweep": "Sweeps",
}
_SECONDS = {
    "round_completed": "RoundDuration",
    "round_failed": "FailedRoundDuration",
    "sweep": "SweepDuration",
}
_BYTES = {"round_completed": "AggregateBytes", "update_accepted": "UpdateBytes"}


def document(
    metrics: dict[str, tuple[float, str]], dimensions: dict[str, str] | None = None
) -> dict[str, Any]:
    """One EMF document: ``metrics`` name → (value, unit), under the namespace, aggregated with no
    dimension and, if ``dimensions`` are given, also by them."""
    dimensions = dimensions or {}
    sets = [[], sorted(dimensions)] if dimensions else [[]]
    directive = {
        "Namespace": settings.FMA_METRICS_NAMESPACE,
        "Dimensions": sets,
        "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()],
    }
    return {
        "_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": [directive]},
        **dimensions,
        **{name: value for name, (value, _) in metrics.items()},
    }


def emit(metrics: dict[str, tuple[float, str]], dimensions: dict[str, str] | None = None) -> None:
    print(json.dumps(document(metrics, dimensions)), file=sys.stdout, flush=True)


def record(observation: Observation) -> None:
    """The telemetry recorder on Lambda (installed by ``fma_service.observability``'s app)."""
    count = _COUNTS.get(observation.name)
    if count is None:
        return
    metrics: dict[str, tuple[float, str]] = {count: (1, "Count")}
    if observation.seconds is not None:
        metrics[_SECONDS[observation.name]] = (observation.seconds, "Seconds")
    if observation.size_bytes is not None:
        metrics[_BYTES[observation.name]] = (observation.size_bytes, "Bytes")
    emit(metrics, {"Reason": observation.reason} if observation.reason else None)
