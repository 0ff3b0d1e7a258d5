"""Reads for the clients pages: each client of an experiment, and each of one client's updates with what its
round measured of it (``report["updates"]``, ``fma_core.update_stats``) and decided (share, quarantine,
sampling). The experiment is one the user may see (the views check it); nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Q, Sum

from fma_django.models import (
    Client,
    Enrollment,
    Event,
    EventKind,
    Experiment,
    ModelAggregate,
    ModelUpdate,
    RoundSelection,
    UpdateStatus,
)


@dataclass(frozen=True)
class ClientRow:
    """One line of an experiment's clients page."""

    client: Client
    enrolled_on: datetime
    revoked: bool
    updates: int  # updates stored (consumed, pending or quarantined)
    rounds: int  # rounds its updates went into
    examples: int  # examples of the updates that went into rounds
    rejected: int  # pushes refused before anything was stored
    quarantined: int
    outlier_rounds: int  # rounds that flagged one of its updates as an outlier


@dataclass(frozen=True)
class UpdateRow:
    """One of a client's updates, as its round saw it."""

    update: ModelUpdate
    round_number: int | None  # the round it went into; None while pending or when quarantined
    figures: dict[str, Any]  # norm, cosine, distance, outlier, share (missing: not measured)
    selected: bool | None  # in its round's draw (client sampling); None: the round drew nobody
    metrics: tuple[tuple[str, Any], ...]
    threshold: float | None = None  # its round's outlier threshold on distances


def _section(report: dict | None) -> dict[str, Any]:
    return (report or {}).get("updates") or {}


def _measured(report: dict | None) -> dict[str, dict[str, Any]]:
    return _section(report).get("per_update") or {}


def experiment_clients(experiment: Experiment) -> list[ClientRow]:
    """Every client ever enrolled in the experiment, first enrolled first, with its figures."""
    enrollments = (
        Enrollment.objects.filter(experiment=experiment).select_related("client").order_by("created_on", "id")
    )
    stored = {
        row["client"]: row
        for row in ModelUpdate.objects.filter(experiment=experiment)
        .values("client")
        .annotate(
            updates=Count("id"),
            rounds=Count("aggregate", distinct=True),
            examples=Sum("num_examples", filter=Q(status=UpdateStatus.CONSUMED)),
            quarantined=Count("id", filter=Q(status=UpdateStatus.QUARANTINED)),
        )
    }
    rejected = dict(
        Event.objects.filter(experiment=experiment, kind=EventKind.UPDATE_REJECTED, client__isnull=False)
        .values("client")
        .annotate(n=Count("id"))
        .values_list("client", "n")
    )
    flagged = _outlier_rounds(experiment)
    rows = []
    for enrollment in enrollments:
        client = enrollment.client
        figures = stored.get(client.pk, {})
        rows.append(
            ClientRow(
                client=client,
                enrolled_on=enrollment.created_on,
                revoked=enrollment.revoked_at is not None or client.revoked_at is not None,
                updates=figures.get("updates", 0),
                rounds=figures.get("rounds", 0),
                examples=figures.get("examples") or 0,
                rejected=rejected.get(client.pk, 0),
                quarantined=figures.get("quarantined", 0),
                outlier_rounds=len(flagged.get(client.pk, ())),
            )
        )
    return rows


def _outlier_rounds(experiment: Experiment) -> dict[int, set[int]]:
    """Client pk → the rounds whose report flagged one of its updates an outlier."""
    flagged_updates: dict[int, int] = {}
    for round_number, report in experiment.aggregates.values_list("round_number", "report"):
        for update_id, figures in _measured(report).items():
            if figures.get("outlier") and update_id.isdigit():
                flagged_updates[int(update_id)] = round_number
    owners = ModelUpdate.objects.filter(experiment=experiment, pk__in=flagged_updates).values_list(
        "pk", "client"
    )
    rounds: dict[int, set[int]] = {}
    for update_pk, client_pk in owners:
        rounds.setdefault(client_pk, set()).add(flagged_updates[update_pk])
    return rounds


def enrolled_client(experiment: Experiment, client_uuid: str) -> Client | None:
    """The client if it was ever enrolled in the experiment (a revoked one still has its history)."""
    enrollment = (
        Enrollment.objects.filter(experiment=experiment, client__uuid=client_uuid)
        .select_related("client")
        .first()
    )
    return enrollment.client if enrollment is not None else None


def client_updates(experiment: Experiment, client: Client) -> list[UpdateRow]:
    """The client's updates to the experiment, newest first, each with its round's figures of it."""
    updates = list(
        ModelUpdate.objects.filter(experiment=experiment, client=client)
        .select_related("aggregate")
        .order_by("-created_on", "-id")
    )
    aggregates = {u.aggregate_id: u.aggregate for u in updates if u.aggregate_id is not None}
    drawn = {
        s.round_number: set(s.clients)
        for s in RoundSelection.objects.filter(
            experiment=experiment, round_number__in=[a.round_number for a in aggregates.values()]
        )
    }
    uuid = str(client.uuid)
    rows = []
    for update in updates:
        aggregate: ModelAggregate | None = aggregates.get(update.aggregate_id)
        round_number = aggregate.round_number if aggregate is not None else None
        figures = dict(_measured(aggregate.report if aggregate else None).get(str(update.pk), {}))
        if aggregate is not None and "share" not in figures and update.aggregate_weight is not None:
            figures["share"] = update.aggregate_weight
        selection = drawn.get(round_number) if round_number is not None else None
        metrics = update.metrics if isinstance(update.metrics, dict) else {}
        rows.append(
            UpdateRow(
                update=update,
                round_number=round_number,
                figures=figures,
                selected=(uuid in selection) if selection is not None else None,
                metrics=tuple(sorted(metrics.items())),
                threshold=(_section(aggregate.report).get("outlier_rule") or {}).get("threshold")
                if aggregate is not None
                else None,
            )
        )
    return rows


def client_rejections(experiment: Experiment, client: Client, *, limit: int = 50) -> list[Event]:
    """The client's newest refused pushes to the experiment (nothing was stored of them), with reasons."""
    return list(
        Event.objects.filter(experiment=experiment, client=client, kind=EventKind.UPDATE_REJECTED).order_by(
            "-id"
        )[:limit]
    )


def client_selections(experiment: Experiment, client: Client) -> tuple[int, int]:
    """How many of the experiment's drawn rounds selected the client, of how many were drawn."""
    uuid = str(client.uuid)
    selections = list(RoundSelection.objects.filter(experiment=experiment).values_list("clients", flat=True))
    return sum(1 for clients in selections if uuid in clients), len(selections)
