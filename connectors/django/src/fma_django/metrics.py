"""What a client may report: ``metrics`` with an update, ``validation_results`` when scoring an aggregate.

Metrics exist to be combined: per round and per name the service computes count, mean,
examples-weighted mean, min and max of what clients reported (``selectors.metrics_combine``), and
the dashboard plots them. So an update's ``metrics`` is a JSON object of names to finite numbers
and nothing else. A value that is text, a boolean, null, a list or an object could not be combined
and would be missing from every summary without anyone being told, so it is refused (400
``invalid_metrics``, naming the metric), on every path that takes metrics: the binary upload's
``X-FMA-Metrics`` header or ``metrics`` query parameter, an upload session's metadata, and the v1
JSON body. NaN and ±Infinity (which Python's JSON parser reads in a header or a query string, and
``1e400`` anywhere) and whole numbers beyond a float's range are refused too: they can be neither
stored as JSON nor averaged.

A score's ``validation_results`` is the original FMA's free-form JSON (``fma-connect`` sends what
the developer's code computes; ``client_agg_results_schema`` says its shape): it is kept as sent,
text included, and its top-level numbers are combined; it only has to be finite, for the same reason.
"""

from __future__ import annotations

import math
from typing import Any

from fma_django.errors import ValidationFailed


def metrics_check(metrics: Any) -> None:
    """Refuse update metrics that are not ``{name: finite number}`` (``None``: none reported)."""
    if metrics is None:
        return
    if not isinstance(metrics, dict):
        raise ValidationFailed(
            f'metrics must be a JSON object of metric names to numbers, e.g. {{"loss": 0.25}}, not {_kind(metrics)}',
            code="invalid_metrics",
        )
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationFailed(
                f"metrics: {name!r} is {_kind(value)}; every metric is a number, combined per round "
                f'(count, mean, weighted mean, min, max): send e.g. {{"{name}": 0.91}}',
                code="invalid_metrics",
            )
        if not _finite(value):
            raise ValidationFailed(
                f"metrics: {name!r} is not a finite number ({_kind(value)})", code="invalid_metrics"
            )


def results_check(results: Any) -> None:
    """Refuse a score's ``validation_results`` holding a number that is not finite, anywhere in it."""
    pending: list[tuple[str, Any]] = [("validation_results", results)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, dict):
            pending.extend((f"{where}/{key}", item) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((f"{where}/{index}", item) for index, item in enumerate(value))
        elif isinstance(value, int | float) and not isinstance(value, bool) and not _finite(value):
            raise ValidationFailed(f"{where} is not a finite number ({_kind(value)})", code="invalid_metrics")


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:  # a whole number beyond a float's range
        return False


def _kind(value: Any) -> str:
    if value is None:
        return "null (leave out a metric you do not have)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"text ({value[:40]!r})"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return f"a whole number of {value.bit_length()} bits"
    return "a list" if isinstance(value, list) else "an object"
