"""Reads for the dashboard's pages: what an experiment is doing now and what each round did.

Rows are always reached through ``fma_django.selectors.experiments_visible``, so a developer sees
her own experiments and staff sees all; nothing here writes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, F, Max, Q, QuerySet, Sum, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from fma_django import privacy, selectors, services
from fma_django.columns import UUIDText
from fma_django.models import (
    Evaluation,
    Event,
    EventKind,
    Experiment,
    ExperimentState,
    ModelAggregate,
    ModelArtifact,
    ModelUpdate,
    RoundLease,
    UpdateStatus,
)

# A client counts as active when it called the API this recently (``Client.last_seen`` is
# refreshed at most once a minute by the authentication classes).
ACTIVE_WINDOW = timedelta(minutes=15)
PROBLEM_KINDS = (EventKind.UPDATE_REJECTED, EventKind.UPDATE_QUARANTINED, EventKind.ROUND_FAILED)
# How many of a round's updates the lineage lists, the first in the round's canonical order: a round
# of 10,000 updates would otherwise put 10,000 lines in the page (about 3 MB of HTML) and read as many
# rows each time it is shown. The aggregate's record in the API lists them all.
INPUTS_SHOWN = 100


@dataclass(frozen=True)
class ExperimentSummary:
    """One line of the experiments list, and the head of the detail page."""

    experiment: Experiment
    state: str  # the lifecycle's (fma_django.lifecycle), or while collecting: aggregating | failed
    current_round: int
    clients_enrolled: int
    clients_active: int
    updates_waiting: int
    last_aggregate_on: datetime | None
    reason: str  # why it is in this state: the lifecycle's reason, or the last round's failure

    @property
    def state_label(self) -> str:
        return self.state.replace("_", " ")


@dataclass(frozen=True)
class RoundInput:
    """One update of a round as the lineage lists it (read as plain values: no model instance), with
    what the round's algorithm decided of it when its report says (Krum, Bulyan): its score (6
    significant digits), and its place in the selection (0: not selected; None: the algorithm selects
    nothing)."""

    update_id: int
    client: str  # the sending client's UUID
    num_examples: int
    weight: float | None  # its share of the aggregate
    content_id: str
    score: str | None = None
    place: int | None = None
    figures: dict | None = (
        None  # norm, cosine, distance, outlier, as the round measured it (report["updates"])
    )


@dataclass(frozen=True)
class RoundRow:
    """What one round did: who took part, how long it took, how many bytes went in and out."""

    aggregate: ModelAggregate
    updates: int
    clients: int
    examples: int
    bytes_in: int
    versions: tuple[str, ...]
    # the first INPUTS_SHOWN of its updates (all of them with ``updates`` ≤ INPUTS_SHOWN), in the
    # canonical (content hash) order the round used; none unless round_rows was asked for them
    inputs: tuple[RoundInput, ...]
    parameters: str  # the algorithm's parameters as the API shows them (JSON); "" when there are none
    norms: RoundNorms | None = None  # the round's norm bound on updates, when the experiment set one
    staleness: RoundStaleness | None = None  # an asynchronous round's staleness mix
    # a secure round keeps no update: how many clients finished each SecAgg+ stage, from its report
    secure_stages: dict[str, int] | None = None

    @property
    def outliers(self) -> int:
        """How many of its updates the round flagged as outliers (``report["updates"]``), listed or not."""
        measured = ((self.aggregate.report or {}).get("updates") or {}).get("per_update") or {}
        return sum(1 for figures in measured.values() if figures.get("outlier"))

    @property
    def selected(self) -> int | None:
        """How many of its updates the round's algorithm selected; None when it selects nothing."""
        selected = ((self.aggregate.report or {}).get("aggregator") or {}).get("selected")
        return None if selected is None else len(selected)

    @property
    def inputs_not_shown(self) -> int:
        """Its updates past the lineage's first INPUTS_SHOWN (0 when ``inputs`` were not asked for)."""
        return self.updates - len(self.inputs) if self.inputs else 0


@dataclass(frozen=True)
class UpdateNorm:
    """One update's norm of its change, as its round screened it (``fma_core.norms``)."""

    update_id: str
    norm: float
    clip: float | None  # the factor its change was scaled by, when it was clipped
    refused: bool


@dataclass(frozen=True)
class RoundNorms:
    """A round's ``report["norms"]``, for the lineage: the bound, how it was set, each update's norm."""

    mode: str
    bound: float
    source: str
    updates: tuple[UpdateNorm, ...]

    @classmethod
    def from_report(cls, report: dict) -> RoundNorms | None:
        section = report.get("norms")
        if not section:
            return None
        clip = section.get("clip", {})
        measured = [(u, n, False) for u, n in section.get("accepted", {}).items()]
        measured += [(u, n, True) for u, n in section.get("refused", {}).items()]
        return cls(
            mode=section["mode"],
            bound=section["bound"],
            source=section["source"],
            updates=tuple(
                UpdateNorm(u, n, clip.get(u), refused) for u, n, refused in sorted(measured, key=_by_id)
            ),
        )


@dataclass(frozen=True)
class UpdateStaleness:
    """One update of an asynchronous round: how many versions old its base was (τ), and its discount s(τ)."""

    update_id: str
    tau: int
    discount: float


@dataclass(frozen=True)
class RoundStaleness:
    """An asynchronous round's ``report["staleness"]`` (``fma_core.asynchronous``), for the lineage: the
    function, the mix (how many updates of each τ), and each update's τ and discount."""

    function: str
    buffer: int
    mix: tuple[tuple[int, int], ...]
    updates: tuple[UpdateStaleness, ...]

    @classmethod
    def from_report(cls, report: dict) -> RoundStaleness | None:
        section = report.get("staleness")
        if not section:
            return None
        function = section["function"]
        params = ", ".join(f"{k}={v:g}" for k, v in function.items() if k != "function")
        each = [(u, d["tau"], d["discount"]) for u, d in section["updates"].items()]
        return cls(
            function=f"{function['function']}({params})" if params else function["function"],
            buffer=section["buffer"],
            mix=tuple(sorted((int(tau), count) for tau, count in section["mix"].items())),
            updates=tuple(UpdateStaleness(u, tau, weight) for u, tau, weight in sorted(each, key=_by_id)),
        )


def _by_id(measured: tuple[str, float, bool]) -> tuple[int, str]:
    update_id = measured[0]
    return (int(update_id), "") if update_id.isdigit() else (0, update_id)


def experiment_state(experiment: Experiment, *, now: float | None = None) -> tuple[str, str]:
    """The experiment's state and why it is in it.

    The lifecycle's state wins unless it is collecting (paused, finished, stopped, budget spent: no
    round will start); while collecting, a live round lease means a round is being aggregated, and a
    last round that failed (and none started since) means failed, with the failure's reason.
    """
    if experiment.state != ExperimentState.COLLECTING:
        return experiment.state, experiment.state_reason
    now = time.time() if now is None else now
    if RoundLease.objects.filter(experiment=experiment, expires_at__gt=now).exclude(token="").exists():
        return "aggregating", ""
    last = (
        Event.objects.filter(
            experiment=experiment, kind__in=(EventKind.ROUND_COMPLETED, EventKind.ROUND_FAILED)
        )
        .order_by("-created_on", "-id")
        .first()
    )
    if last is not None and last.kind == EventKind.ROUND_FAILED:
        return "failed", str(last.detail.get("reason", ""))
    return "collecting", ""


def experiment_summary(experiment: Experiment) -> ExperimentSummary:
    enrolled = experiment.enrollments.filter(revoked_at__isnull=True, client__revoked_at__isnull=True)
    latest = experiment.aggregates.aggregate(round=Max("round_number"), on=Max("created_on"))
    state, reason = experiment_state(experiment)
    return ExperimentSummary(
        experiment=experiment,
        state=state,
        current_round=latest["round"] or 0,
        clients_enrolled=enrolled.count(),
        clients_active=enrolled.filter(client__last_seen__gte=timezone.now() - ACTIVE_WINDOW).count(),
        updates_waiting=experiment.model_updates.filter(status=UpdateStatus.PENDING).count(),
        last_aggregate_on=latest["on"],
        reason=reason,
    )


def _compact(value: object) -> str:
    return json.dumps(value, separators=(", ", ": "), sort_keys=True)


def experiment_settings(experiment: Experiment) -> list[tuple[str, str]]:
    """The experiment's configuration as its page lists it: (setting, value), the unset ones said so."""
    spec = experiment.tensor_spec or []
    parameters = sum(math.prod(t.get("shape", [])) for t in spec if isinstance(t, dict))
    enrollment = (
        "legacy (anonymous, CLIENT-UUID only)"
        if experiment.legacy_mode
        else "open"
        if experiment.open_enrollment
        else "by enrollment token"
    )
    params = experiment.aggregator_params or {}
    return [
        ("Aggregator", experiment.aggregator + (f" {_compact(params)}" if params else "")),
        ("Round policy", _compact(services.effective_round_policy(experiment) or "every pending update")),
        (
            "Client sampling",
            _compact(experiment.client_sampling) if experiment.client_sampling else "every enrolled client",
        ),
        (
            "Asynchronous rounds",
            _compact(experiment.asynchronous) if experiment.asynchronous else "no: synchronous rounds",
        ),
        ("Update norm bound", _compact(experiment.update_norm) if experiment.update_norm else "none"),
        ("Differential privacy", _compact(experiment.privacy) if experiment.privacy else "none"),
        (
            "Secure aggregation",
            _compact(experiment.secure_aggregation) if experiment.secure_aggregation is not None else "no",
        ),
        (
            "Evaluated on",
            ", ".join(f"{name} ({goal['goal']})" for name, goal in experiment.evaluation["metrics"].items())
            if experiment.evaluation
            else "nothing declared",
        ),
        *_privacy_budget(experiment),
        ("Updates sent as", experiment.update_kind),
        (
            "Stale updates",
            f"trained on one of the newest {experiment.furthest_base_agg} aggregates"
            if experiment.furthest_base_agg
            else "accepted from any base",
        ),
        (
            "Finished when",
            _compact(experiment.finish_when) if experiment.finish_when else "never (stop it by hand)",
        ),
        ("Tensors", f"{len(spec)} tensors, {parameters:,} parameters" if spec else "not declared yet"),
        ("Enrollment", enrollment),
        (
            "Largest update",
            f"{experiment.max_update_bytes:,} bytes"
            if experiment.max_update_bytes
            else "the service's limit",
        ),
        ("Created", experiment.created_on.strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]


def _privacy_budget(experiment: Experiment) -> list[tuple[str, str]]:
    """The ledger's row: ε spent of the budget, and whether it stopped the rounds."""
    spent = privacy.ledger(experiment)
    if spent is None:
        return []
    text = (
        f"ε {spent['epsilon']:.4g} of {spent['budget_epsilon']:g} at δ {spent['delta']:g}, "
        f"{spent['charged_rounds']} round{'s' if spent['charged_rounds'] != 1 else ''} charged"
    )
    return [("Privacy budget", text + (": spent, no more rounds" if spent["budget_spent"] else ""))]


def experiment_summaries(user: AbstractBaseUser) -> list[ExperimentSummary]:
    """The experiments list: the user's own experiments (all of them for staff), newest first."""
    experiments = selectors.experiments_visible(user).select_related("developer")
    return [experiment_summary(e) for e in experiments]


def round_rows(experiment: Experiment, *, only: Q | None = None, with_inputs: bool = True) -> list[RoundRow]:
    """Every round of the experiment (or those ``only`` selects), oldest first, with its
    participation and transfer figures, and the first INPUTS_SHOWN of its input updates unless
    ``with_inputs`` is false (only the lineage lists them). Three statements however many rounds
    and updates: the rounds, their published versions, their listed inputs."""
    aggregates = (
        experiment.aggregates.filter(only or Q())
        .select_related("parent")
        .annotate(
            n_updates=Count("updates"),
            n_clients=Count("updates__client", distinct=True),
            n_examples=Sum("updates__num_examples"),
            n_bytes=Sum("updates__size_bytes"),
        )
        .order_by("round_number")
    )
    # the artifacts and inputs of just those rounds (a poll asks for one new round, not all)
    chosen = {"aggregate__in": experiment.aggregates.filter(only)} if only is not None else {}
    versions: dict[int, list[str]] = {}
    for aggregate_id, version in ModelArtifact.objects.filter(
        experiment=experiment, aggregate__isnull=False, **chosen
    ).values_list("aggregate_id", "version"):
        versions.setdefault(aggregate_id, []).append(version)
    inputs: dict[int, list[tuple]] = {}
    for aggregate_id, *shown in _listed_inputs(experiment, chosen) if with_inputs else ():
        inputs.setdefault(aggregate_id, []).append(shown)
    return [
        RoundRow(
            aggregate=a,
            updates=a.n_updates,
            clients=a.n_clients,
            examples=a.n_examples or 0,
            bytes_in=a.n_bytes or 0,
            versions=tuple(sorted(versions.get(a.pk, []))),
            inputs=round_inputs(a, inputs.get(a.pk, [])),
            parameters=json.dumps(a.aggregator_params, sort_keys=True) if a.aggregator_params else "",
            norms=RoundNorms.from_report(a.report or {}),
            staleness=RoundStaleness.from_report(a.report or {}),
            secure_stages=((a.report or {}).get("secure_aggregation") or {}).get("stages"),
        )
        for a in aggregates
    ]


def _listed_inputs(experiment: Experiment, chosen: dict[str, QuerySet]) -> QuerySet:
    """Each round's first INPUTS_SHOWN updates in canonical order, as the columns the lineage shows:
    (aggregate, update, client's UUID, examples, share, content hash), in one statement. The
    database ranks the rounds' updates by their own columns and joins the clients of those listed
    only."""
    canonical = (F("content_id").asc(), F("id").asc())
    listed = (
        ModelUpdate.objects.filter(experiment=experiment, aggregate__isnull=False, **chosen)
        .annotate(place=Window(RowNumber(), partition_by=F("aggregate_id"), order_by=canonical))
        .filter(place__lte=INPUTS_SHOWN)
        .values("pk")
    )
    return (
        ModelUpdate.objects.filter(pk__in=listed)
        .order_by("aggregate_id", *canonical)
        .values_list(
            "aggregate_id", "id", UUIDText("client__uuid"), "num_examples", "aggregate_weight", "content_id"
        )
    )


def round_inputs(aggregate: ModelAggregate, updates: list[tuple]) -> tuple[RoundInput, ...]:
    """The round's listed updates (``_listed_inputs``' columns after the aggregate) with the scores
    and selection its algorithm reported (``report["aggregator"]``)."""
    decided = (aggregate.report or {}).get("aggregator") or {}
    scores = decided.get("scores") or {}
    selected = decided.get("selected")
    places = {str(u): place for place, u in enumerate(selected or [], start=1)}
    measured = ((aggregate.report or {}).get("updates") or {}).get("per_update") or {}
    return tuple(
        RoundInput(
            update_id=pk,
            client=client,
            num_examples=examples,
            weight=weight,
            content_id=content_id,
            score=f"{scores[str(pk)]:.6g}" if str(pk) in scores else None,
            place=places.get(str(pk), 0) if selected is not None else None,
            figures=measured.get(str(pk)),
        )
        for pk, client, examples, weight, content_id in updates
    )


def problem_events(experiment: Experiment, *, after: int = 0, limit: int = 50) -> list[Event]:
    """The newest rejected and quarantined updates and failed rounds (those after event id
    ``after``), newest first, with their reasons."""
    return list(
        Event.objects.filter(Q(kind__in=PROBLEM_KINDS), experiment=experiment, id__gt=after)
        .select_related("client")
        .order_by("-id")[:limit]
    )


@dataclass(frozen=True)
class Marks:
    """The newest of each record the detail page's regions show: a poll that saw these marks asks
    only for what came after them (ids and round numbers only grow)."""

    round: int
    evaluation: int
    artifact: int
    problem: int


def experiment_marks(experiment: Experiment) -> Marks:
    def newest(rows: QuerySet, field: str = "id") -> int:
        return rows.aggregate(newest=Max(field))["newest"] or 0

    return Marks(
        round=newest(experiment.aggregates.all(), "round_number"),
        evaluation=newest(Evaluation.objects.filter(aggregate__experiment=experiment)),
        artifact=newest(ModelArtifact.objects.filter(experiment=experiment)),
        problem=newest(Event.objects.filter(experiment=experiment, kind__in=PROBLEM_KINDS)),
    )
