"""Rounds per experiment as an operator asks about them: pending, running, failed (``fma-aggregator status``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from django.db.models import Count, Max, Q

from fma_django.models import Event, EventKind, Experiment, RoundLease, UpdateStatus


@dataclass(frozen=True)
class RoundStatus:
    experiment_id: str
    name: str
    state: str  # the experiment's lifecycle state (fma_django.lifecycle): rounds run only while collecting
    rounds_completed: int
    pending_updates: int
    quarantined_updates: int
    running: dict[str, Any] | None  # the live lease: worker, round, seconds left
    failures_since_last_round: int
    last_failure: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def round_statuses(*, now: float, experiment_id: str | None = None) -> list[RoundStatus]:
    experiments = Experiment.objects.order_by("pk").annotate(
        pending=Count("model_updates", filter=Q(model_updates__status=UpdateStatus.PENDING), distinct=True),
        quarantined=Count(
            "model_updates", filter=Q(model_updates__status=UpdateStatus.QUARANTINED), distinct=True
        ),
        completed=Max("aggregates__round_number"),
    )
    if experiment_id is not None:
        experiments = experiments.filter(pk=int(experiment_id))
    leases = {
        lease.experiment_id: lease
        for lease in RoundLease.objects.exclude(token="").filter(expires_at__gt=now)
    }
    statuses = []
    for experiment in experiments:
        lease = leases.get(experiment.pk)
        events = Event.objects.filter(experiment=experiment)
        last_round = events.filter(kind=EventKind.ROUND_COMPLETED).aggregate(at=Max("created_on"))["at"]
        failures = events.filter(kind=EventKind.ROUND_FAILED)
        if last_round is not None:
            failures = failures.filter(created_on__gt=last_round)
        latest_failure = failures.order_by("-created_on", "-id").first()
        statuses.append(
            RoundStatus(
                experiment_id=str(experiment.pk),
                name=experiment.name,
                state=experiment.state,
                rounds_completed=experiment.completed or 0,
                pending_updates=experiment.pending,
                quarantined_updates=experiment.quarantined,
                running={
                    "worker": lease.worker,
                    "round": lease.round_number,
                    "lease_seconds_left": round(lease.expires_at - now, 1),
                }
                if lease
                else None,
                failures_since_last_round=failures.count(),
                last_failure=latest_failure.detail.get("reason") if latest_failure else None,
            )
        )
    return statuses
