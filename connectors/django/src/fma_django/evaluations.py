"""Evaluation on held-out data: which metrics an experiment declares, and reporting them for an aggregate.

An experiment's ``evaluation`` setting names the metrics measured on held-out data, each with its
goal (``max``: higher is better, e.g. accuracy; ``min``: lower is better, e.g. loss), and may add a
JSON Schema the reported metrics must match (``schema``, applied as ``metrics_schema`` is to an
update's metrics, with the same safety rules)::

    {"metrics": {"accuracy": {"goal": "max"}, "loss": {"goal": "min"}}, "schema": {...}}

An evaluation reports some of those metrics for one aggregate of the experiment, measured on
``num_examples`` examples, by an enrolled client (its own held-out data) or by the experiment's
developer (an evaluator of her own, e.g. on a central test set). Each reporter evaluates an
aggregate once: sending the same report again returns the first (a retry never counts twice); a
different report for an aggregate it evaluated is refused (409 ``evaluation_exists``), because a
combined figure that others (a chart, an export, the lifecycle's target) have read must not change
under them. The v1 ``client_aggregate_scores/`` is a client's evaluation too (``score_submit``),
with its free-form results kept as sent.
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from fma_django import json_schemas, lifecycle, services
from fma_django.errors import Conflict, ValidationFailed
from fma_django.limits import MAX_BIGINT, whole_number_range
from fma_django.metrics import metrics_check, results_check
from fma_django.models import Client, Evaluation, EvaluationSource, Experiment, ModelAggregate

GOALS = ("max", "min")
MAX_METRICS = 100
NAME_RULE = "1 to 64 letters, digits, '_', '.', '-', '/' or spaces"
_NAME = re.compile(r"[A-Za-z0-9_.\-/ ]{1,64}")
RESERVED = "num_examples"  # a v1 score's weight, never a metric


def config_check(config: Any) -> dict[str, Any] | None:
    """The ``evaluation`` setting if it is one, else a 400 ``invalid_evaluation`` naming what is wrong."""
    if config is None:
        return None

    def refuse(problem: str) -> ValidationFailed:
        return ValidationFailed(
            f"evaluation: {problem}; e.g. "
            '{"metrics": {"accuracy": {"goal": "max"}, "loss": {"goal": "min"}}}',
            code="invalid_evaluation",
        )

    if not isinstance(config, dict):
        raise refuse(f"a JSON object, not {type(config).__name__}")
    unknown = set(config) - {"metrics", "schema"}
    if unknown:
        raise refuse(f"unknown field(s) {', '.join(map(repr, sorted(unknown)))} (it has metrics and schema)")
    metrics = config.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise refuse("metrics is a JSON object of at least one metric name to {goal: max or min}")
    if len(metrics) > MAX_METRICS:
        raise refuse(f"{len(metrics)} metrics; at most {MAX_METRICS}")
    for name, spec in metrics.items():
        if not _NAME.fullmatch(name) or name == RESERVED:
            raise refuse(f"metric name {name[:80]!r}: a name is {NAME_RULE}, and not {RESERVED!r}")
        if not isinstance(spec, dict) or set(spec) != {"goal"} or spec["goal"] not in GOALS:
            raise refuse(
                f"metric {name!r} is {{goal: max}} (higher is better) or {{goal: min}}, not {spec!r}"
            )
    if "schema" in config and config["schema"] is not None:
        json_schemas.schema_check(field="evaluation.schema", schema=config["schema"])
    return config  # stored as given, so that `fma apply` finds it unchanged


def _check_metrics(experiment: Experiment, metrics: Any, *, what: str) -> None:
    """Finite numbers, each a declared metric, matching the declared schema."""
    metrics_check(metrics)
    declared = experiment.evaluation_goals
    undeclared = sorted(set(metrics) - set(declared))
    if undeclared:
        raise ValidationFailed(
            f"{what}: {', '.join(map(repr, undeclared[:10]))} "
            f"{'is not a metric' if len(undeclared) == 1 else 'are not metrics'} experiment "
            f"{experiment.pk} declares in its evaluation setting ({', '.join(map(repr, declared))})",
            code="undeclared_metric",
        )
    schema = (experiment.evaluation or {}).get("schema")
    if schema is not None:
        json_schemas.schema_validate(field="evaluation.schema", schema=schema, value=metrics, what=what)


def _check_examples(num_examples: Any) -> None:
    if (
        isinstance(num_examples, bool)
        or not isinstance(num_examples, int)
        or not 1 <= num_examples <= MAX_BIGINT
    ):
        raise ValidationFailed(
            f"num_examples (the held-out examples measured) must be {whole_number_range(1, MAX_BIGINT)}, "
            f"not {str(num_examples)[:100]}",
            code="invalid_num_examples",
        )


def evaluation_submit(
    *,
    experiment: Experiment,
    aggregate_id: int,
    metrics: Any,
    num_examples: Any,
    client: Client | None = None,
    user: AbstractBaseUser | None = None,
) -> tuple[Evaluation, bool]:
    """Record an evaluation of one of the experiment's aggregates by ``client`` (enrolled in it) or,
    without a client, by ``user`` (who may change the experiment: the caller checks). Returns
    ``(evaluation, created)``: the first evaluation again for a retry of the same report."""
    if client is not None:
        services.check_enrolled(experiment, client)
    if not experiment.evaluation_goals:
        raise ValidationFailed(
            f"experiment {experiment.pk} declares no evaluation metrics: its developer sets them first, "
            'e.g. evaluation: {"metrics": {"accuracy": {"goal": "max"}}}',
            code="evaluation_not_declared",
        )
    aggregate = ModelAggregate.objects.filter(pk=aggregate_id, experiment=experiment).first()
    if aggregate is None:
        raise ValidationFailed(
            f"aggregate {aggregate_id} is not an aggregate of experiment {experiment.pk}",
            code="invalid_aggregate",
        )
    if not isinstance(metrics, dict) or not metrics:
        raise ValidationFailed(
            'metrics: a JSON object of at least one declared metric to its value, e.g. {"accuracy": 0.91}',
            code="invalid_metrics",
        )
    _check_metrics(experiment, metrics, what="metrics")
    _check_examples(num_examples)
    source = EvaluationSource.CLIENT if client is not None else EvaluationSource.DEVELOPER
    return _record(
        Evaluation(
            aggregate=aggregate,
            source=source,
            client=client,
            user=user if client is None else None,
            metrics=metrics,
            num_examples=num_examples,
        )
    )


def _record(evaluation: Evaluation) -> tuple[Evaluation, bool]:
    """Store ``evaluation`` unless its reporter evaluated the aggregate already: then the first one
    if it says the same (a retry), else 409. The unique constraints settle two requests at once."""
    try:
        with transaction.atomic():
            evaluation.save()
            lifecycle.finish_if_reached(evaluation.aggregate.experiment)  # a target on an evaluation metric
    except IntegrityError:
        first = _first(evaluation)
        if first is None:  # not a twin: some other constraint
            raise
        same = (first.metrics, first.num_examples, first.validation_results) == (
            evaluation.metrics,
            evaluation.num_examples,
            evaluation.validation_results,
        )
        if same:
            return first, False
        raise Conflict(
            f"aggregate {evaluation.aggregate_id} was already evaluated by this "
            f"{evaluation.source} with other results (evaluation {first.pk}); an evaluation cannot change",
            code="evaluation_exists",
        ) from None
    return evaluation, True


def _first(evaluation: Evaluation) -> Evaluation | None:
    reporter = {"client": evaluation.client} if evaluation.client_id else {"user": evaluation.user}
    return Evaluation.objects.filter(
        aggregate=evaluation.aggregate, source=evaluation.source, **reporter
    ).first()


def v1_metrics(results: Any) -> tuple[dict[str, int | float], int]:
    """A v1 score's combinable part: its top-level numbers (but ``num_examples``), and its weight,
    ``num_examples`` when it reports a whole number ≥ 1, else 1. Text, lists and booleans stay in
    the results as sent, uncombined (the original protocol is free-form)."""
    if not isinstance(results, dict):
        return {}, 1
    metrics = {
        name: value
        for name, value in results.items()
        if name != RESERVED and isinstance(value, int | float) and not isinstance(value, bool)
    }
    weight = results.get(RESERVED)
    valid = isinstance(weight, int) and not isinstance(weight, bool) and 1 <= weight <= MAX_BIGINT
    return metrics, weight if valid else 1


def score_submit(
    *, aggregate: ModelAggregate, client: Client, validation_results: Any
) -> tuple[Evaluation, bool]:
    """A v1 score (``client_aggregate_scores/``): a client's evaluation with free-form results.

    The results are checked as before (finite numbers anywhere, ``client_agg_results_schema``);
    an experiment that declares its evaluation metrics also holds the score's top-level numbers
    to them. A retry of the same results returns the first score; other results for a scored
    aggregate are refused with the original's 400 ``duplicate_score``.
    """
    experiment = aggregate.experiment
    services.check_enrolled(experiment, client)
    results_check(validation_results)
    if experiment.client_agg_results_schema is not None:
        json_schemas.schema_validate(
            field="client_agg_results_schema",
            schema=experiment.client_agg_results_schema,
            value=validation_results,
            what="validation_results",
        )
    metrics, weight = v1_metrics(validation_results)
    if experiment.evaluation_goals:
        _check_metrics(experiment, metrics, what="validation_results")
    try:
        return _record(
            Evaluation(
                aggregate=aggregate,
                source=EvaluationSource.CLIENT,
                client=client,
                metrics=metrics,
                num_examples=weight,
                validation_results=validation_results,
            )
        )
    except Conflict:
        raise ValidationFailed(
            f"this client already scored aggregate {aggregate.pk} with other results; a score cannot change",
            code="duplicate_score",
        ) from None
