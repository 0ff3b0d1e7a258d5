"""The Celery app: ``celery -A fma_aggregator worker`` (add ``-B``, or run ``celery -A fma_aggregator beat``,
for the periodic sweep).

Late acknowledgement, one task prefetched per process and rejection when a worker process dies:
a task that was running when its worker was killed is delivered again rather than lost, and
the round engine's lease makes running it again safe. No result backend: nothing reads a task's
result (the event log and the database say what each round did), and Celery's client would
otherwise subscribe to the backend for every task sent, waiting on it through an outage.
Every wait on the broker is bounded by ``FMA_BROKER_TIMEOUT``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from fma_aggregator.config import AggregatorConfig
from fma_aggregator.django_setup import setup_django

setup_django()
config = AggregatorConfig.from_env()

# The API's announcements: one more try on a fresh connection (a pooled one may have died with a
# broker restart), then give up; the sweep catches up.
ANNOUNCE_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0}


def _transport_options() -> dict[str, Any]:
    options: dict[str, Any] = {"visibility_timeout": config.visibility_timeout}
    if config.broker_url.startswith(("redis", "rediss")):
        # redis-py waits forever on a broker that accepts the connection and never answers, by default
        options.update(socket_connect_timeout=config.broker_timeout, socket_timeout=config.broker_timeout)
    return options


app = Celery("fma_aggregator", include=["fma_aggregator.tasks"])
app.conf.update(
    broker_url=config.broker_url,
    result_backend=None,
    task_ignore_result=True,
    task_default_queue=config.queue,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_timeout=config.broker_timeout,
    broker_connection_retry_on_startup=True,
    broker_transport_options=_transport_options(),
    beat_schedule={"fma-sweep": {"task": "fma.sweep", "schedule": config.sweep_seconds}},
)


def publish(task: str, argument: str) -> None:
    """Send ``task(argument)`` for the API's announcer (``fma_aggregator.announcer``); raises if the broker
    cannot take it."""
    app.send_task(task, args=[argument], retry=True, retry_policy=ANNOUNCE_RETRY)
