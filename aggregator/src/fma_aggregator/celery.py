"""The Celery app: ``celery -A fma_aggregator worker`` (add ``-B``, or run ``celery -A fma_aggregator beat``,
for the periodic sweep).

Late acknowledgement, one task prefetched per process and rejection when a worker process dies:
a task that was running when its worker was killed is delivered again rather than lost, and
the round engine's lease makes running it again safe.
"""

from __future__ import annotations

from celery import Celery

from fma_aggregator.config import AggregatorConfig
from fma_aggregator.django_setup import setup_django

setup_django()
config = AggregatorConfig.from_env()

app = Celery("fma_aggregator", include=["fma_aggregator.tasks"])
app.conf.update(
    broker_url=config.broker_url,
    result_backend=config.result_backend,
    task_default_queue=config.queue,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=24 * 3600,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": config.visibility_timeout},
    beat_schedule={"fma-sweep": {"task": "fma.sweep", "schedule": config.sweep_seconds}},
)
