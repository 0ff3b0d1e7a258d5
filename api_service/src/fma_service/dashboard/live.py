"""The detail page's live regions: what a poll sends, region by region, and only what changed.

The page keeps a cursor per region (``data-cursor``) and sends them back when it polls. The
summary's cursor is a digest of what it shows; a table's or the charts' cursor is the newest round,
evaluation, artifact or problem event it was rendered with (ids and round numbers only grow). A poll
renders only the regions whose cursor moved, and of a table or the charts only the rows that are
new or changed since the cursor, which ``static/dashboard/live.js`` puts in place. A missing or
malformed cursor gets the whole region, as the first page load does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import Q
from django.http import HttpRequest
from django.template.loader import render_to_string

from fma_django import selectors as fma_selectors
from fma_django.models import Evaluation, Experiment, ModelArtifact
from fma_service.dashboard import charts
from fma_service.dashboard import selectors as dashboard
from fma_service.dashboard.selectors import ExperimentSummary, Marks

REGIONS = ("summary", "plots", "rounds", "problems", "lineage")


@dataclass(frozen=True)
class Region:
    """A region as a poll sends it: its new cursor, and HTML that either replaces the region
    (``rows`` false) or holds only the rows to put in place (``rows`` true)."""

    cursor: str
    html: str
    rows: bool

    def as_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "html": self.html, "rows": self.rows}


def _summary_cursor(summary: ExperimentSummary) -> str:
    artifact = summary.experiment.current_artifact
    shown = (
        summary.state,
        summary.reason,
        summary.current_round,
        summary.clients_enrolled,
        summary.clients_active,
        summary.updates_waiting,
        summary.last_aggregate_on,
        artifact.version if artifact else None,
    )
    return hashlib.sha256(repr(shown).encode()).hexdigest()[:16]


def cursors(summary: ExperimentSummary, marks: Marks) -> dict[str, str]:
    """Each region's cursor for the experiment as it is now."""
    return {
        "summary": _summary_cursor(summary),
        "plots": f"{marks.round}.{marks.evaluation}",
        "rounds": str(marks.round),
        "problems": str(marks.problem),
        "lineage": f"{marks.round}.{marks.artifact}",
    }


def _marks(cursor: str | None, count: int) -> tuple[int, ...] | None:
    """A table cursor's numbers, or ``None`` (send the whole region) when it is missing or malformed."""
    parts = (cursor or "").split(".")
    if len(parts) != count or not all(p.isascii() and p.isdigit() and len(p) < 19 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _changed_rounds(previous: tuple[int, ...] | None, model: type, field: str) -> Q | None:
    """Rounds after the cursor's, and rounds with a ``model`` row (an evaluation, an artifact) after its id."""
    if previous is None:
        return None
    last_round, last_id = previous
    touched = model.objects.filter(id__gt=last_id).values(field)
    return Q(round_number__gt=last_round) | Q(pk__in=touched)


def _plots(experiment: Experiment, cursor: str | None) -> dict[str, Any]:
    only = _changed_rounds(_marks(cursor, 2), Evaluation, "aggregate_id")
    metrics = fma_selectors.aggregate_metrics(experiment, only=only)
    rows = dashboard.round_rows(experiment, only=only, with_inputs=False)
    return {
        "charts": charts.metric_charts(metrics, experiment.evaluation_goals) + charts.round_charts(rows),
        "partial": only is not None,
    }


def _rounds(experiment: Experiment, cursor: str | None) -> dict[str, Any]:
    previous = _marks(cursor, 1)
    only = Q(round_number__gt=previous[0]) if previous else None
    return {
        "rounds": dashboard.round_rows(experiment, only=only, with_inputs=False),
        "partial": only is not None,
    }


def _problems(experiment: Experiment, cursor: str | None) -> dict[str, Any]:
    previous = _marks(cursor, 1)
    after = previous[0] if previous else 0
    return {"problems": dashboard.problem_events(experiment, after=after), "partial": previous is not None}


def _lineage(experiment: Experiment, cursor: str | None) -> dict[str, Any]:
    only = _changed_rounds(_marks(cursor, 2), ModelArtifact, "aggregate_id")
    return {"rounds": dashboard.round_rows(experiment, only=only), "partial": only is not None}


_CONTEXT: Mapping[str, Callable[[Experiment, str | None], dict[str, Any]]] = {
    "plots": _plots,
    "rounds": _rounds,
    "problems": _problems,
    "lineage": _lineage,
}


def regions(
    request: HttpRequest,
    experiment: Experiment,
    *,
    seen: Mapping[str, str | None],
    may_change: bool,
) -> tuple[ExperimentSummary, dict[str, Region]]:
    """The regions whose cursor differs from what the page has ``seen``: all of them for a page
    that has seen nothing (its first load), none for a page that is up to date."""
    summary = dashboard.experiment_summary(experiment)
    now = cursors(summary, dashboard.experiment_marks(experiment))
    base = {"experiment": experiment, "summary": summary, "may_change": may_change}
    result = {}
    for name in REGIONS:
        previous = seen.get(name)
        if previous == now[name]:
            continue
        context = base if name == "summary" else {**base, **_CONTEXT[name](experiment, previous)}
        html = render_to_string(f"dashboard/_{name}.html", context, request=request)
        result[name] = Region(cursor=now[name], html=html, rows=bool(context.get("partial")))
    return summary, result
