"""The aggregator's settings, all from environment variables, with defaults for one machine.

- ``FMA_AGGREGATOR_RUNNER`` (``inprocess``): who runs a round the API says may be ready, and
  checks an upload too large to check within its complete request: ``inprocess``, ``celery``,
  ``lambda`` or ``none``. The Django setting of the same name wins.
- ``FMA_LEASE_SECONDS`` (900): how long a claimed round is held, after its worker's last sign of
  life, before another worker may take it over. Workers renew it every third of this while they
  compute, so a long round keeps it; a killed worker's round is taken over this long after it died.
  With ``FMA_UPLOAD_TIMEOUT_SECONDS``, it sets how old bytes no record references must be before
  the sweep removes them (``fma_django.housekeeping.orphan_grace_seconds``).
- ``FMA_SWEEP_SECONDS`` (60): how often deadlines and expired leases are swept.
- ``FMA_SHARD_BYTES`` (unset: never shard): models larger than this are split into shards of about
  this size (byte ranges of the model, cutting through tensors where needed) aggregated in
  parallel (one Celery task or Lambda invocation per shard).
- ``FMA_BROKER_URL`` (``redis://127.0.0.1:6379/0``): the Celery broker; ``amqp://...`` for RabbitMQ.
- ``FMA_BROKER_TIMEOUT`` (10): seconds to wait for the broker when connecting to it or sending to
  it. The API never waits for it in a request: its announcements go from a background thread.
- ``FMA_CELERY_QUEUE`` (``fma``): the queue the tasks go to.
- ``FMA_BROKER_VISIBILITY_TIMEOUT`` (3600): Redis only, seconds before a task whose worker died
  unacknowledged is delivered again.
- ``FMA_AGGREGATOR_FUNCTION`` (unset): name or ARN of the aggregator Lambda function, for the
  ``lambda`` runner (the function itself falls back to its own ARN for shards and sweeps, but
  needs it to announce the round of an update it accepted when checking an upload).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from fma_core.errors import ConfigurationError

RUNNERS = ("inprocess", "celery", "lambda", "none")


@dataclass(frozen=True)
class AggregatorConfig:
    lease_seconds: float = 900.0
    sweep_seconds: float = 60.0
    shard_bytes: int | None = None
    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_timeout: float = 10.0
    queue: str = "fma"
    visibility_timeout: int = 3600
    lambda_function: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> AggregatorConfig:
        shard = env.get("FMA_SHARD_BYTES")
        return cls(
            lease_seconds=_number(env, "FMA_LEASE_SECONDS", cls.lease_seconds),
            sweep_seconds=_number(env, "FMA_SWEEP_SECONDS", cls.sweep_seconds),
            shard_bytes=int(_number(env, "FMA_SHARD_BYTES", 0)) if shard else None,
            broker_url=env.get("FMA_BROKER_URL") or cls.broker_url,
            broker_timeout=_number(env, "FMA_BROKER_TIMEOUT", cls.broker_timeout),
            queue=env.get("FMA_CELERY_QUEUE") or cls.queue,
            visibility_timeout=int(_number(env, "FMA_BROKER_VISIBILITY_TIMEOUT", cls.visibility_timeout)),
            lambda_function=env.get("FMA_AGGREGATOR_FUNCTION") or None,
        )


def runner_name() -> str:
    """The runner the API notifies: the Django setting ``FMA_AGGREGATOR_RUNNER``, else the environment."""
    from django.conf import settings

    name = getattr(settings, "FMA_AGGREGATOR_RUNNER", None) or os.environ.get(
        "FMA_AGGREGATOR_RUNNER", "inprocess"
    )
    if name not in RUNNERS:
        raise ConfigurationError(f"FMA_AGGREGATOR_RUNNER must be one of {', '.join(RUNNERS)}, not {name!r}")
    return name


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, not {raw!r}")
    return value
