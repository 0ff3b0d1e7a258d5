"""Reads, scoped to who is asking: the one place that decides which rows a principal may see.

A principal is a developer (a Django user: own experiments; staff: all) or a client (the
experiments it is enrolled in and not revoked from; a client that authenticated the legacy way,
with a bare ``CLIENT-UUID``, only those in legacy mode). Rows outside the scope are invisible,
so the API answers 404 for them rather than revealing that they exist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from fma_core.shards import aggregate_key, shards_prefix
from fma_core.state import state_key
from fma_django.models import (
    Client,
    Evaluation,
    EvaluationSource,
    Experiment,
    ModelAggregate,
    ModelArtifact,
    ModelUpdate,
    RoundLease,
    SecureRoundRow,
    UploadSession,
    UploadState,
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
    return ModelAggregate.objects.filter(experiment__in=experiments_visible(principal)).select_related(
        "experiment"
    )


def artifacts_visible(principal: Principal) -> QuerySet[ModelArtifact]:
    return ModelArtifact.objects.filter(experiment__in=experiments_visible(principal)).select_related(
        "experiment"
    )


def scores_visible(principal: Principal) -> QuerySet[Evaluation]:
    """The v1 ``client_aggregate_scores/``: clients' evaluations (a client sees its own)."""
    return evaluations_visible(principal).filter(source=EvaluationSource.CLIENT)


def evaluations_visible(principal: Principal) -> QuerySet[Evaluation]:
    """Evaluations of the aggregates the principal can see: all of them for a developer, a client's own."""
    found = Evaluation.objects.filter(aggregate__experiment__in=experiments_visible(principal))
    if isinstance(principal, ClientPrincipal):
        found = found.filter(client=principal.client)
    return found.select_related("client", "aggregate")


def latest_aggregate(experiment: Experiment) -> ModelAggregate | None:
    return experiment.aggregates.order_by("-round_number").first()


def initial_artifact(experiment_id: int) -> ModelArtifact | None:
    """The model the experiment was created with (the artifact no round produced)."""
    return (
        ModelArtifact.objects.filter(experiment_id=experiment_id, aggregate__isnull=True)
        .order_by("pk")
        .first()
    )


def initial_weights_key(experiment_id: int) -> str | None:
    """The initial model's weights key (the global model before round 1); None when the experiment
    was created without one."""
    initial = initial_artifact(experiment_id)
    return initial.weights_key if initial is not None else None


def update_base_keys(*, experiment_id: int, bases: Sequence[tuple[int, str | None]]) -> list[str | None]:
    """The weights each of an experiment's updates was trained from, given each one's ``(base_round,
    base aggregate's weights key)``: that key when the update names its base aggregate, the initial
    model's when it names round 0, else None (its base aggregate is gone, or there is no initial
    model). One query at most, for the initial model."""
    initial_key = None
    if any(key is None and base_round == 0 for base_round, key in bases):
        initial_key = initial_weights_key(experiment_id)
    return [key if key is not None or base_round != 0 else initial_key for base_round, key in bases]


def enrolled_client(experiment: Experiment, client_uuid: object) -> Client | None:
    """The client with this public id if it is (still) enrolled in the experiment."""
    return Client.objects.filter(
        uuid=client_uuid,
        revoked_at__isnull=True,
        enrollments__experiment=experiment,
        enrollments__revoked_at__isnull=True,
    ).first()


# Clients' reported metrics, combined per aggregate (the original's open issue #5)


@dataclass(frozen=True)
class MetricSummary:
    """One metric over the clients that reported it for one aggregate.

    ``weighted_mean`` weights each client's value by its examples, so a client that trained or
    evaluated on ten times the data counts ten times as much, as FedAvg weights the model itself.
    """

    count: int
    examples: int
    mean: float
    weighted_mean: float
    min: float
    max: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "examples": self.examples,
            "mean": self.mean,
            "weighted_mean": self.weighted_mean,
            "min": self.min,
            "max": self.max,
        }


def metric_summarize(values: list[tuple[float, int]]) -> MetricSummary:
    """Combine ``(value, examples)`` pairs; ``values`` must not be empty and every weight is ≥ 1."""
    numbers = [value for value, _ in values]
    examples = sum(weight for _, weight in values)
    return MetricSummary(
        count=len(values),
        examples=examples,
        mean=math.fsum(numbers) / len(numbers),
        weighted_mean=math.fsum(value * weight for value, weight in values) / examples,
        min=min(numbers),
        max=max(numbers),
    )


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def metrics_combine(reports: list[tuple[Any, int]]) -> dict[str, MetricSummary]:
    """Per metric name, the summary of the numeric top-level values in ``(metrics, examples)`` reports.

    Reports that are not JSON objects, and values that are not finite numbers (strings, lists,
    booleans), are left out: a metric's count says how many clients it is computed over. An
    update's and an evaluation's metrics hold only finite numbers (``fma_django.metrics``); such
    values come from updates stored before that rule.
    """
    by_name: dict[str, list[tuple[float, int]]] = {}
    for metrics, examples in reports:
        if not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():
            if name != "num_examples" and _numeric(value):
                by_name.setdefault(name, []).append((float(value), examples))
    return {name: metric_summarize(by_name[name]) for name in sorted(by_name)}


@dataclass(frozen=True)
class AggregateMetrics:
    """What was reported for one aggregate: by clients with the updates it was built from, and by its
    evaluations on held-out data (clients' and the developer's)."""

    aggregate: ModelAggregate
    training: dict[str, MetricSummary]
    evaluation: dict[str, MetricSummary]


def aggregate_metrics(experiment: Experiment, *, only: Q | None = None) -> list[AggregateMetrics]:
    """Every aggregate of the experiment (or those ``only`` selects), oldest round first, with its
    clients' metrics combined.

    ``training``: the ``metrics`` of the updates the round consumed, weighted by their
    ``num_examples``. ``evaluation``: its evaluations on held-out data (``evaluation_summary``).
    ``only`` lets a poll read just the rounds that changed since it last asked.
    """
    aggregates = list(experiment.aggregates.filter(only or Q()).order_by("round_number"))
    training: dict[int, list[tuple[Any, int]]] = {a.pk: [] for a in aggregates}
    for aggregate_id, metrics, examples in ModelUpdate.objects.filter(aggregate__in=aggregates).values_list(
        "aggregate_id", "metrics", "num_examples"
    ):
        training[aggregate_id].append((metrics, examples))
    evaluation: dict[int, list[tuple[Any, int]]] = {a.pk: [] for a in aggregates}
    for aggregate_id, metrics, examples in Evaluation.objects.filter(aggregate__in=aggregates).values_list(
        "aggregate_id", "metrics", "num_examples"
    ):
        evaluation[aggregate_id].append((metrics, examples))
    return [
        AggregateMetrics(
            aggregate=a,
            training=metrics_combine(training[a.pk]),
            evaluation=metrics_combine(evaluation[a.pk]),
        )
        for a in aggregates
    ]


@dataclass(frozen=True)
class EvaluationSummary:
    """An aggregate's evaluations on held-out data combined: per metric, over the evaluations that
    report it, the mean weighted by their examples (for a metric that is a mean over examples, such
    as accuracy or a loss, that is its value over all their held-out examples together), with how
    many reported (``reports``: in all, and by ``sources``: client, developer) and on how many examples."""

    aggregate: ModelAggregate
    reports: int
    examples: int
    sources: dict[str, int]
    metrics: dict[str, MetricSummary]
    goals: dict[str, str]


def evaluation_summary(aggregate: ModelAggregate) -> EvaluationSummary:
    """The aggregate detail's ``evaluation``: one query, over the aggregate's evaluations."""
    rows = list(aggregate.evaluations.values_list("source", "metrics", "num_examples"))
    sources: dict[str, int] = {}
    for source, _, _ in rows:
        sources[source] = sources.get(source, 0) + 1
    return EvaluationSummary(
        aggregate=aggregate,
        reports=len(rows),
        examples=sum(examples for _, _, examples in rows),
        sources=sources,
        metrics=metrics_combine([(metrics, examples) for _, metrics, examples in rows]),
        goals=aggregate.experiment.evaluation_goals,
    )


@dataclass(frozen=True)
class EvaluationValue:
    """A metric's combined value for one aggregate (``evaluation_latest``) and its declared goal."""

    metric: str
    goal: str | None
    aggregate: ModelAggregate
    summary: MetricSummary

    @property
    def value(self) -> float:
        return self.summary.weighted_mean

    def reaches(self, target: float) -> bool:
        """Whether the value is at the target or beyond it in the metric's goal (``min``: at or below;
        a metric the experiment no longer declares is taken as ``max``)."""
        return self.value <= target if self.goal == "min" else self.value >= target


def evaluation_latest(experiment: Experiment, metric: str) -> EvaluationValue | None:
    """The combined value of ``metric`` for the newest of the experiment's aggregates that has an
    evaluation reporting it; None before any. Evaluations arrive after their round, so this may be
    an older round than the newest aggregate (``aggregate`` says which)."""
    reported = Evaluation.objects.filter(aggregate__experiment=experiment, metrics__has_key=metric).order_by(
        "-aggregate__round_number"
    )
    newest = reported.values_list("aggregate_id", flat=True).first()
    if newest is None:
        return None
    aggregate = ModelAggregate.objects.get(pk=newest)
    values = reported.filter(aggregate=aggregate).values_list("metrics", "num_examples")
    summary = metrics_combine([({metric: m[metric]}, examples) for m, examples in values]).get(metric)
    if summary is None:  # stored before metrics held only finite numbers
        return None
    return EvaluationValue(
        metric=metric, goal=experiment.evaluation_goals.get(metric), aggregate=aggregate, summary=summary
    )


# Weight-store keys the records reference (the sweep removes the rest: fma_core.orphans)


@dataclass(frozen=True)
class ClaimedKeys:
    """What the rounds under a lease are writing: each claim's aggregate and its shard records."""

    keys: frozenset[str]
    prefixes: tuple[str, ...]

    def __contains__(self, key: object) -> bool:
        return key in self.keys or (isinstance(key, str) and key.startswith(self.prefixes))


def weight_keys_claimed(*, now: float, grace_seconds: float) -> ClaimedKeys:
    """The keys of every claimed round (its aggregate, its server state, its shards' prefix):
    written before the commit that records them. A lease expired more than ``grace_seconds`` ago
    claims nothing: its worker stopped renewing it that long ago, and taking it over would remove
    the same bytes. Read before the records (``weight_keys_referenced``), so a claim committing in
    between is seen in one or the other."""
    leases = RoundLease.objects.exclude(token="").filter(expires_at__gt=now - grace_seconds)
    claims = list(leases.values_list("experiment_id", "round_number", "token"))
    return ClaimedKeys(
        keys=frozenset(
            key(str(pk), number, token) for pk, number, token in claims for key in (aggregate_key, state_key)
        ),
        prefixes=tuple(f"{shards_prefix(str(pk), number, token)}/" for pk, number, token in claims),
    )


def weight_keys_referenced(*, keys: Sequence[str], claimed: ClaimedKeys) -> set[str]:
    """Of ``keys``, those a record references: an update whose bytes are kept, an aggregate or the
    server state its round left, an artifact, an upload session still open or being checked, a
    claimed round, or a secure round still under way (its masked inputs).

    The tables are read in one statement, so in one snapshot: bytes passing from an upload session
    to its update (one transaction) are seen referenced by one or the other. A masked input passes to
    no other record (the round ends by deleting it), so its round is read apart."""
    keys = list(keys)
    sessions = UploadSession.objects.filter(state__in=[UploadState.OPEN, UploadState.CHECKING])
    found = (
        ModelUpdate.objects.filter(weights_key__in=keys, weights_removed_on__isnull=True)
        .order_by()
        .values_list("weights_key", flat=True)
        .union(
            ModelAggregate.objects.filter(weights_key__in=keys).order_by().values_list("weights_key"),
            ModelAggregate.objects.filter(state_key__in=keys).order_by().values_list("state_key"),
            ModelArtifact.objects.filter(weights_key__in=keys).order_by().values_list("weights_key"),
            sessions.filter(weights_key__in=keys).order_by().values_list("weights_key"),
        )
    )
    return set(found) | {key for key in keys if key in claimed} | _masked_inputs_named(keys)


def _masked_inputs_named(keys: Sequence[str]) -> set[str]:
    """Of ``keys``, the masked inputs (``secure/{experiment}/{round id}/…``) an open secure round names."""
    rounds = set()
    for key in keys:
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "secure" and parts[2].isdigit():
            rounds.add(int(parts[2]))
    if not rounds:
        return set()
    open_rounds = SecureRoundRow.objects.filter(pk__in=rounds, stage__in=SecureRoundRow.LIVE_STAGES)
    named = {key for state in open_rounds.values_list("state", flat=True) for key in state["inputs"].values()}
    return named.intersection(keys)
