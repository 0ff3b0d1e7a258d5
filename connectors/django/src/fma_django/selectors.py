"""Reads, scoped to who is asking: the one place that decides which rows a principal may see.

A principal is a developer (a Django user: own experiments; staff: all) or a client (the
experiments it is enrolled in and not revoked from; a client that authenticated the legacy way,
with a bare ``CLIENT-UUID``, only those in legacy mode). Rows outside the scope are invisible,
so the API answers 404 for them rather than revealing that they exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from fma_django.models import (
    Client,
    ClientAggregateScore,
    Experiment,
    ModelAggregate,
    ModelArtifact,
    ModelUpdate,
)


@dataclass(frozen=True)
class ClientPrincipal:
    """``request.user`` for an authenticated client; never staff, never a Django user."""

    client: Client
    legacy: bool

    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None

    def __str__(self) -> str:
        return f"client {self.client.uuid}"


Principal = AbstractBaseUser | ClientPrincipal


def experiments_visible(principal: Principal) -> QuerySet[Experiment]:
    if isinstance(principal, ClientPrincipal):
        if principal.client.is_revoked:
            return Experiment.objects.none()
        experiments = Experiment.objects.filter(
            enrollments__client=principal.client, enrollments__revoked_at__isnull=True
        )
        return experiments.filter(legacy_mode=True) if principal.legacy else experiments
    if not principal.is_authenticated or not principal.is_active:
        return Experiment.objects.none()
    if principal.is_staff:
        return Experiment.objects.all()
    return Experiment.objects.filter(developer=principal)


def experiments_owned(principal: Principal) -> QuerySet[Experiment]:
    """Experiments the principal may change: a developer's own, or all for staff; none for clients."""
    if isinstance(principal, ClientPrincipal):
        return Experiment.objects.none()
    return experiments_visible(principal)


def updates_visible(principal: Principal) -> QuerySet[ModelUpdate]:
    updates = ModelUpdate.objects.filter(experiment__in=experiments_visible(principal))
    if isinstance(principal, ClientPrincipal):
        updates = updates.filter(client=principal.client)
    return updates.select_related("client", "experiment")


def aggregates_visible(principal: Principal) -> QuerySet[ModelAggregate]:
    return ModelAggregate.objects.filter(experiment__in=experiments_visible(principal))


def artifacts_visible(principal: Principal) -> QuerySet[ModelArtifact]:
    return ModelArtifact.objects.filter(experiment__in=experiments_visible(principal))


def scores_visible(principal: Principal) -> QuerySet[ClientAggregateScore]:
    scores = ClientAggregateScore.objects.filter(aggregate__experiment__in=experiments_visible(principal))
    if isinstance(principal, ClientPrincipal):
        scores = scores.filter(client=principal.client)
    return scores.select_related("client")


def latest_aggregate(experiment: Experiment) -> ModelAggregate | None:
    return experiment.aggregates.order_by("-round_number").first()


def enrolled_client(experiment: Experiment, client_uuid: object) -> Client | None:
    """The client with this public id if it is (still) enrolled in the experiment."""
    return Client.objects.filter(
        uuid=client_uuid,
        revoked_at__isnull=True,
        enrollments__experiment=experiment,
        enrollments__revoked_at__isnull=True,
    ).first()
