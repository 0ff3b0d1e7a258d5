"""FMA's operational figures, taken where each thing is recorded: the event log, and the sweep.

Every round committed or failed, update accepted or refused, lease taken over and upload expired
is an ``Event`` row (``services.event_record``); once the row's transaction commits, it becomes
one ``Observation`` handed to each recorder a deployment installed: Prometheus on servers
(``fma_service.observability``), CloudWatch's embedded metric format on AWS Lambda
(``fma_aggregator.emf``). A rolled-back event is never counted, and nothing is counted twice. The
sweep, which writes no event, reports its runs itself (``sweep_observed``). fma_django imports no
metrics library; a recorder that raises is logged and never fails the work it counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from django.db import transaction
from django.db.models.signals import post_save

from fma_django.models import Event, EventKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One thing that happened: ``name`` (``round_completed``, ``round_failed``, ``update_accepted``,
    ``update_rejected``, ``lease_taken_over``, ``upload_expired``, ``sweep``), the experiment (or
    None), a ``reason`` code from a bounded set (a refusal's ``DomainError.code``), and its measures."""

    name: str
    experiment_id: str | None = None
    reason: str = ""
    seconds: float | None = None
    size_bytes: int | None = None
    updates: int | None = None
    measures: dict[str, float] = field(default_factory=dict)


Recorder = Callable[[Observation], None]
_recorders: list[Recorder] = []


def add_recorder(recorder: Recorder) -> None:
    """Hand every later observation to ``recorder`` too (adding it again does nothing)."""
    if recorder not in _recorders:
        _recorders.append(recorder)


def remove_recorder(recorder: Recorder) -> None:
    if recorder in _recorders:
        _recorders.remove(recorder)


def observe(observation: Observation) -> None:
    for recorder in list(_recorders):
        try:
            recorder(observation)
        except Exception:
            logger.exception("recording %s failed", observation.name)


def sweep_observed(*, seconds: float, done: dict[str, int]) -> None:
    """A sweep ran: how long it took and what each chore did."""
    observe(Observation("sweep", seconds=seconds, measures={k: float(v) for k, v in done.items()}))


def observation_of(event: Event) -> Observation | None:
    """What an event counts as, or None for the events no figure counts (experiments made, publishing...)."""
    detail = event.detail or {}
    experiment_id = str(event.experiment_id) if event.experiment_id is not None else None
    kind = event.kind
    if kind == EventKind.ROUND_COMPLETED:
        return Observation(
            "round_completed",
            experiment_id,
            seconds=detail.get("duration_seconds"),
            size_bytes=detail.get("size_bytes"),
            updates=detail.get("updates"),
        )
    if kind == EventKind.ROUND_FAILED:
        return Observation("round_failed", experiment_id, seconds=detail.get("duration_seconds"))
    if kind == EventKind.ROUND_STARTED and detail.get("taken_over"):
        return Observation("lease_taken_over", experiment_id)
    if kind == EventKind.UPDATE_ACCEPTED:
        return Observation("update_accepted", experiment_id, size_bytes=detail.get("size"))
    if kind == EventKind.UPDATE_REJECTED:
        return Observation("update_rejected", experiment_id, reason=str(detail.get("code") or "invalid"))
    if kind == EventKind.UPLOAD_EXPIRED:
        return Observation("upload_expired", experiment_id)
    return None


def _on_event_saved(sender: type[Event], instance: Event, created: bool, **kwargs: object) -> None:
    if not created or not _recorders:
        return
    observation = observation_of(instance)
    if observation is not None:
        transaction.on_commit(partial(observe, observation))


def connect() -> None:
    """Count the event log (``FmaDjangoConfig.ready``)."""
    post_save.connect(_on_event_saved, sender=Event, dispatch_uid="fma_django.telemetry")
