"""An experiment's life, defined once: which states exist, who moves it between them, and what each allows.

    collecting ⇄ paused            the developer (the v1 ``allow_aggregation`` switch is this pair)
    collecting | paused → stopped   the developer ends it; no way back
    collecting | paused → finished  the service, when ``finish_when`` is reached (a round limit, a metric);
                                    the developer may resume it once the condition no longer holds
    collecting | paused → budget_spent  the service, when a privacy budget would be exceeded; final

Only ``collecting`` runs rounds (``allow_aggregation`` mirrors it, and a database constraint keeps the
two in step). Updates are accepted while collecting or paused; an ended experiment refuses them
(409 ``experiment_ended``) and still serves its models. Every change is one transaction with its event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from fma_core.numbers import finite_number, is_whole
from fma_django.errors import Conflict, ValidationFailed
from fma_django.limits import MAX_BIGINT, whole_number_range
from fma_django.models import EventKind, Experiment, ExperimentState
from fma_django.selectors import aggregate_metrics, evaluation_latest

ENDED = frozenset({ExperimentState.FINISHED, ExperimentState.STOPPED, ExperimentState.BUDGET_SPENT})
# what a developer may ask for; finished and budget_spent are the service's to decide
REQUESTABLE = (ExperimentState.COLLECTING, ExperimentState.PAUSED, ExperimentState.STOPPED)
SOURCES = ("evaluation", "training")


@dataclass(frozen=True)
class FinishWhen:
    """``finish_when``: the experiment is finished after ``rounds`` aggregates, or once an aggregate's
    weighted-mean ``metric`` (from its clients' evaluations, or from the training metrics of the updates
    it was built from) is at least (``goal`` "at_least") or at most ("at_most") ``target``."""

    rounds: int | None = None
    metric: str | None = None
    source: str = "evaluation"
    goal: str = "at_least"
    target: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> FinishWhen | None:
        if config is None:
            return None
        if not isinstance(config, dict) or not config:
            raise ValidationFailed(
                'finish_when must be an object such as {"rounds": 30} or {"metric": "accuracy", '
                '"at_least": 0.9}',
                code="invalid_finish_when",
            )
        unknown = set(config) - {"rounds", "metric", "source", "at_least", "at_most"}
        if unknown:
            raise ValidationFailed(
                f"finish_when: unknown key(s) {', '.join(sorted(unknown))}; it takes rounds, metric, "
                "source, at_least, at_most",
                code="invalid_finish_when",
            )
        rounds = config.get("rounds")
        if rounds is not None and (not is_whole(rounds) or not 1 <= rounds <= MAX_BIGINT):
            raise ValidationFailed(
                f"finish_when.rounds must be {whole_number_range(1, MAX_BIGINT)} (a round number), not "
                f"{str(rounds)[:40]}",
                code="invalid_finish_when",
            )
        metric = config.get("metric")
        goals = [goal for goal in ("at_least", "at_most") if goal in config]
        if metric is None:
            if goals or "source" in config:
                raise ValidationFailed(
                    "finish_when: at_least, at_most and source need a metric", code="invalid_finish_when"
                )
            if rounds is None:
                raise ValidationFailed("finish_when needs rounds or a metric", code="invalid_finish_when")
            return cls(rounds=rounds)
        if not isinstance(metric, str) or not metric or len(metric) > 100 or metric == "num_examples":
            raise ValidationFailed(
                f"finish_when.metric must name a metric (1 to 100 characters), not {metric!r}",
                code="invalid_finish_when",
            )
        source = config.get("source", "evaluation")
        if source not in SOURCES:
            raise ValidationFailed(
                f"finish_when.source must be 'evaluation' or 'training', not {source!r}",
                code="invalid_finish_when",
            )
        if len(goals) != 1:
            raise ValidationFailed(
                "finish_when with a metric needs exactly one of at_least and at_most",
                code="invalid_finish_when",
            )
        target = finite_number(config[goals[0]])
        if target is None:
            raise ValidationFailed(
                f"finish_when.{goals[0]} must be a finite number, not {str(config[goals[0]])[:40]}",
                code="invalid_finish_when",
            )
        return cls(rounds=rounds, metric=metric, source=source, goal=goals[0], target=target)

    def reached(self, *, rounds: int, metric_value: float | None) -> str | None:
        """Why the experiment is finished after ``rounds`` aggregates whose latest measured
        ``metric_value``, or None while it is not."""
        if self.rounds is not None and rounds >= self.rounds:
            return f"round limit reached: {rounds} of {self.rounds} rounds"
        if self.metric is not None and metric_value is not None:
            met = metric_value >= self.target if self.goal == "at_least" else metric_value <= self.target
            if met:
                sign = "≥" if self.goal == "at_least" else "≤"
                return (
                    f"target reached: {self.source} {self.metric} {metric_value:.6g} {sign} {self.target:g}"
                )
        return None


def finish_when_check(config: Any) -> Any:
    """The ``finish_when`` to store (as given), or a 400 naming what is wrong with it."""
    FinishWhen.from_config(config)
    return config


def accepting_require(experiment: Experiment, *, afresh: bool = True) -> None:
    """Refuse an update for an ended experiment. Its state is read afresh (it may have ended since the
    request began) unless ``afresh`` is False: then ``experiment`` was read for this check (at the
    request's start, or together with what the caller reads next to it)."""
    if afresh:
        state, reason = Experiment.objects.filter(pk=experiment.pk).values_list("state", "state_reason").get()
    else:
        state, reason = experiment.state, experiment.state_reason
    if state in ENDED:
        raise Conflict(
            f"experiment {experiment.pk} is {ExperimentState(state).label.lower()}"
            f"{': ' + reason if reason else ''}; it takes no more updates (its models can still be pulled)",
            code="experiment_ended",
        )


def _moved(experiment: Experiment, state: ExperimentState, reason: str) -> None:
    experiment.state = state
    experiment.allow_aggregation = state == ExperimentState.COLLECTING
    experiment.state_reason = reason[:500]
    experiment.state_changed_at = timezone.now()
    Experiment.objects.filter(pk=experiment.pk).update(
        state=experiment.state,
        allow_aggregation=experiment.allow_aggregation,
        state_reason=experiment.state_reason,
        state_changed_at=experiment.state_changed_at,
    )


def _record(experiment: Experiment, before: str, user: AbstractBaseUser | None) -> None:
    from fma_django.services import event_record  # services import this module

    after = experiment.state
    if after == ExperimentState.PAUSED:
        kind = EventKind.AGGREGATION_PAUSED
    elif after == ExperimentState.COLLECTING:
        kind = EventKind.AGGREGATION_RESUMED
    else:
        kind = EventKind.EXPERIMENT_ENDED
    event_record(
        kind=kind,
        experiment=experiment,
        user=user,
        state=after,
        previous=before,
        reason=experiment.state_reason,
    )


def experiment_set_state(
    *, experiment: Experiment, state: str, user: AbstractBaseUser, reason: str = ""
) -> Experiment:
    """A developer pauses, resumes or stops an experiment; asking for the state it is in changes nothing."""
    if state not in REQUESTABLE:
        raise ValidationFailed(
            f"state must be one of {', '.join(REQUESTABLE)}, not {str(state)[:40]!r} (finished and "
            "budget_spent are the service's to set)",
            code="invalid_state",
        )
    with transaction.atomic():
        current = Experiment.objects.select_for_update().get(pk=experiment.pk)
        before = current.state
        if before == state:
            experiment.refresh_from_db()
            return experiment
        if before in (ExperimentState.STOPPED, ExperimentState.BUDGET_SPENT) or (
            before == ExperimentState.FINISHED and state == ExperimentState.PAUSED
        ):
            raise Conflict(
                f"experiment {experiment.pk} is {ExperimentState(before).label.lower()}"
                f"{': ' + current.state_reason if current.state_reason else ''}; it cannot be {state} again",
                code="experiment_ended",
            )
        if before == ExperimentState.FINISHED and state == ExperimentState.COLLECTING:
            still = finish_reason(current)
            if still:
                raise Conflict(
                    f"experiment {experiment.pk} is finished ({still}): change finish_when before resuming",
                    code="experiment_ended",
                )
        if state == ExperimentState.STOPPED:
            text = f"stopped by {user.get_username()}" + (f": {reason}" if reason else "")
        else:
            text = reason
        _moved(current, ExperimentState(state), text)
        _record(current, before, user)
    experiment.refresh_from_db()
    return experiment


def experiment_end(*, experiment: Experiment, state: ExperimentState, reason: str) -> bool:
    """The service ends an experiment (``finished``, ``budget_spent``); True if this call ended it,
    False if it had already ended. Joins the caller's transaction, e.g. a round's commit."""
    if state not in (ExperimentState.FINISHED, ExperimentState.BUDGET_SPENT):
        raise ValueError(f"the service ends experiments as finished or budget_spent, not {state}")
    with transaction.atomic():
        current = Experiment.objects.select_for_update().get(pk=experiment.pk)
        if current.state in ENDED:
            return False
        before = current.state
        _moved(current, state, reason)
        _record(current, before, None)
    experiment.refresh_from_db()
    return True


def finish_reason(experiment: Experiment) -> str | None:
    """Why ``finish_when`` holds for the experiment as its records stand, or None."""
    finish = FinishWhen.from_config(experiment.finish_when)
    if finish is None:
        return None
    rounds = experiment.aggregates.aggregate(last=Max("round_number"))["last"] or 0
    return finish.reached(rounds=rounds, metric_value=_latest_metric(experiment, finish))


def _latest_metric(experiment: Experiment, finish: FinishWhen) -> float | None:
    """The finishing metric's weighted mean on the newest aggregate that has it measured: by its
    evaluations on held-out data, or by the training metrics of the updates it was built from."""
    if finish.metric is None:
        return None
    if finish.source == "evaluation":
        found = evaluation_latest(experiment, finish.metric)
        return found.value if found is not None else None
    latest = experiment.aggregates.order_by("-round_number").values_list("pk", flat=True)[:20]
    for row in reversed(aggregate_metrics(experiment, only=Q(pk__in=list(latest)))):
        summary = row.training.get(finish.metric)
        if summary is not None:
            return summary.weighted_mean
    return None


def finish_if_reached(experiment: Experiment) -> bool:
    """End a collecting or paused experiment as finished when its ``finish_when`` holds; called after a
    round commits (in its transaction), after an evaluation is reported, and after its settings change."""
    if experiment.state in ENDED or not experiment.finish_when:
        return False
    reason = finish_reason(experiment)
    return reason is not None and experiment_end(
        experiment=experiment, state=ExperimentState.FINISHED, reason=reason
    )
