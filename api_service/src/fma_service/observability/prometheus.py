"""FMA's own Prometheus metrics (request metrics come from django-prometheus's middleware).

Counters and histograms are fed by ``fma_django.telemetry``'s observations, in the process where
each thing happened (an API process for updates, a worker for rounds). Gauges of what is waiting
(upload sessions open, rounds pending) are read from the database at scrape time, so they are true
whichever process did the work. In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``: fma-server's
worker processes, gunicorn, Celery's prefork pool) every process writes its own files and a scrape
sums them (``prometheus_client.multiprocess``).

Labels stay bounded: ``outcome`` and ``reason`` (a refusal's code) come from fixed sets, and an
``experiment`` label is filled only for the experiments listed in ``FMA_METRICS_EXPERIMENTS``
(empty, and so absent, for every other one).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count, Q
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from fma_django.models import ModelUpdate, UpdateStatus, UploadSession, UploadState
from fma_django.telemetry import Observation

_SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_BYTES = tuple(float(1 << shift) for shift in range(10, 36, 2))  # 1 KiB … 16 GiB

ROUNDS = Counter("fma_rounds", "Rounds ended, by outcome (completed, failed).", ["outcome", "experiment"])
ROUND_SECONDS = Histogram(
    "fma_round_duration_seconds",
    "Seconds from a round's claim to its commit (completed) or its release (failed).",
    ["outcome", "experiment"],
    buckets=_SECONDS,
)
ROUND_BYTES = Histogram(
    "fma_round_aggregate_bytes", "Size of each committed aggregate.", ["experiment"], buckets=_BYTES
)
UPDATES = Counter(
    "fma_updates",
    "Updates accepted or rejected; reason: the refusal's code (too_large, invalid_weights, ...).",
    ["outcome", "reason", "experiment"],
)
UPDATE_BYTES = Counter("fma_update_accepted_bytes", "Bytes of the updates accepted.", ["experiment"])
TAKEOVERS = Counter(
    "fma_lease_takeovers", "Rounds claimed from a worker whose lease had expired.", ["experiment"]
)
SWEEPS = Counter("fma_sweeps", "Housekeeping sweeps run.")
SWEEP_SECONDS = Histogram(
    "fma_sweep_duration_seconds", "Seconds one housekeeping sweep took.", buckets=_SECONDS
)
SWEEP_ITEMS = Counter(
    "fma_sweep_items",
    "What the sweeps' chores did, by chore (uploads_expired, orphans_removed, ...).",
    ["chore"],
)


def experiment_label(experiment_id: str | None) -> str:
    """The experiment's id if the operator opted in to it (``FMA_METRICS_EXPERIMENTS``), else empty."""
    return experiment_id if experiment_id and experiment_id in settings.FMA_METRICS_EXPERIMENTS else ""


def record(observation: Observation) -> None:
    """The telemetry recorder (installed by ``ObservabilityConfig.ready``)."""
    experiment = experiment_label(observation.experiment_id)
    name = observation.name
    if name in {"round_completed", "round_failed"}:
        outcome = name.removeprefix("round_")
        ROUNDS.labels(outcome, experiment).inc()
        if observation.seconds is not None:
            ROUND_SECONDS.labels(outcome, experiment).observe(observation.seconds)
        if observation.size_bytes is not None:
            ROUND_BYTES.labels(experiment).observe(observation.size_bytes)
    elif name == "update_accepted":
        UPDATES.labels("accepted", "", experiment).inc()
        UPDATE_BYTES.labels(experiment).inc(observation.size_bytes or 0)
    elif name == "update_rejected":
        UPDATES.labels("rejected", observation.reason, experiment).inc()
    elif name == "lease_taken_over":
        TAKEOVERS.labels(experiment).inc()
    elif name == "sweep":
        SWEEPS.inc()
        SWEEP_SECONDS.observe(observation.seconds or 0.0)
        for chore, count in observation.measures.items():
            SWEEP_ITEMS.labels(chore).inc(count)


class WaitingCollector(Collector):
    """What is waiting, read from the database at scrape time (two aggregate queries)."""

    def collect(self) -> Iterator[Metric]:
        sessions = UploadSession.objects.aggregate(
            open=Count("pk", filter=Q(state=UploadState.OPEN)),
            checking=Count("pk", filter=Q(state=UploadState.CHECKING)),
        )
        pending = ModelUpdate.objects.filter(
            status=UpdateStatus.PENDING, experiment__allow_aggregation=True
        ).aggregate(updates=Count("pk"), experiments=Count("experiment", distinct=True))
        uploads = GaugeMetricFamily("fma_upload_sessions", "Upload sessions by state.", labels=["state"])
        uploads.add_metric(["open"], sessions["open"])
        uploads.add_metric(["checking"], sessions["checking"])
        yield uploads
        yield GaugeMetricFamily(
            "fma_rounds_pending",
            "Experiments with pending updates (aggregation not paused): rounds waiting for their policy or a worker.",
            value=pending["experiments"],
        )
        yield GaugeMetricFamily(
            "fma_updates_pending", "Updates accepted and not yet aggregated.", value=pending["updates"]
        )


def scrape_registry(*, waiting: bool) -> CollectorRegistry:
    """What one scrape reads: every process's metrics (summed in multiprocess mode), and, with
    ``waiting``, the database's gauges (the API's endpoint; a worker's exporter leaves them out)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Default())
    if waiting:
        registry.register(WaitingCollector())
    return registry


def scrape(*, waiting: bool) -> bytes:
    """One scrape in Prometheus's text format."""
    return generate_latest(scrape_registry(waiting=waiting))


class _Default(Collector):
    """The process's default registry (django-prometheus's metrics, FMA's, the process collector),
    as a collector, so a scrape's registry can add the database's gauges beside it."""

    def collect(self) -> Iterator[Metric]:
        return REGISTRY.collect()
