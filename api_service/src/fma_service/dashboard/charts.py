"""The dashboard's charts as data: what each one plots, its axes' labels and units, and its points.

The server renders each chart as a table of its points (readable without JavaScript, and by screen
readers); ``static/dashboard/charts.js`` reads that table and draws it with uPlot (zoom, hover
values, smoothing). The same charts feed the CSV export and the run comparison, so a chart, its
table and its file never disagree.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fma_django.selectors import AggregateMetrics
from fma_service.dashboard.clients import UpdateRow as ClientUpdate
from fma_service.dashboard.selectors import RoundRow

SOURCES = (
    ("evaluation", "held-out evaluation of each aggregate"),
    ("training", "reported with the updates of each round"),
)
DESCRIPTIONS = {
    "evaluation": "the evaluations of each round's aggregate on held-out data (clients' and the developer's)",
    "training": "what clients reported with the updates each round aggregated",
}
GOALS = {"max": "higher is better", "min": "lower is better"}


@dataclass(frozen=True)
class Series:
    """One line: a name (an experiment's, on the comparison page) and its ``(round, value)`` points."""

    name: str
    points: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Chart:
    """One chart: ``y_label`` names the quantity and its unit; ``from_zero`` says whether the y axis
    starts at zero (counts and durations do; a metric's axis fits its values, and says so);
    ``integer`` keeps the ticks on whole numbers (clients are counted, never 9.5)."""

    key: str
    title: str
    description: str
    y_label: str
    series: tuple[Series, ...]
    from_zero: bool = False
    integer: bool = False
    fixed: bool = False  # participation and duration: every experiment has them, after the metrics
    note: str = ""

    @property
    def rounds(self) -> list[int]:
        return sorted({r for s in self.series for r, _ in s.points})

    @property
    def rows(self) -> list[tuple[int, list[float | None]]]:
        """The table: one row per round, one value per series (``None`` where a series has none)."""
        values = [dict(s.points) for s in self.series]
        return [(r, [v.get(r) for v in values]) for r in self.rounds]


def metric_charts(metrics: Sequence[AggregateMetrics], goals: Mapping[str, str] | None = None) -> list[Chart]:
    """One chart per metric: the evaluations on held-out data first (every metric the experiment
    declares in its ``goals``, reported yet or not, with its goal), then what came with updates."""
    goals = goals or {}
    result = []
    for source, caption in SOURCES:
        names = {name for item in metrics for name in getattr(item, source)}
        if source == "evaluation":
            names |= set(goals)
        for name in sorted(names):
            points = tuple(
                (item.aggregate.round_number, getattr(item, source)[name].weighted_mean)
                for item in metrics
                if name in getattr(item, source)
            )
            goal = GOALS.get(goals.get(name, "")) if source == "evaluation" else None
            result.append(
                Chart(
                    key=f"{source}-{name}",
                    title=f"{name} — {caption}" + (f" ({goal})" if goal else ""),
                    description=f"{name}: {DESCRIPTIONS[source]}, mean weighted by examples, per round",
                    y_label=name,
                    note="The y axis fits the values: it does not start at 0.",
                    series=(Series(name, points),),
                )
            )
    return result


def round_charts(rows: Sequence[RoundRow]) -> list[Chart]:
    """The two charts every experiment has: clients per round and aggregation time per round."""
    return [
        Chart(
            key="participation",
            title="Clients per round",
            description="number of clients whose updates each round aggregated",
            y_label="clients",
            series=(Series("clients", tuple((r.aggregate.round_number, r.clients) for r in rows)),),
            from_zero=True,
            integer=True,
            fixed=True,
        ),
        Chart(
            key="duration",
            title="Aggregation time per round",
            description="seconds the aggregator spent on each round",
            y_label="aggregation time (s)",
            series=(
                Series(
                    "seconds", tuple((r.aggregate.round_number, r.aggregate.duration_seconds) for r in rows)
                ),
            ),
            from_zero=True,
            fixed=True,
        ),
    ]


def overlay(key: str, charts_by_name: Iterable[tuple[str, Chart | None]]) -> Chart | None:
    """The chart ``key`` of several experiments on one set of axes, one series per experiment
    (an experiment without that chart adds an empty series); ``None`` when none has it."""
    found = [(name, chart) for name, chart in charts_by_name]
    template = next((chart for _, chart in found if chart is not None), None)
    if template is None:
        return None
    return Chart(
        key=f"compare-{key}",
        title=template.title,
        description=f"{template.description}, one line per experiment",
        y_label=template.y_label,
        series=tuple(Series(name, chart.series[0].points if chart else ()) for name, chart in found),
        from_zero=template.from_zero,
        integer=template.integer,
        note=template.note,
    )


def as_csv(charts: Sequence[Chart]) -> str:
    """The charts' values as one CSV table: a row per round, a column per chart and series, full
    precision (``repr`` of the float), empty where a round has no value."""
    columns = [(chart, i) for chart in charts for i in range(len(chart.series))]
    header = ["round"] + [
        chart.key if len(chart.series) == 1 else f"{chart.key}:{chart.series[i].name}" for chart, i in columns
    ]
    lookup = [dict(chart.series[i].points) for chart, i in columns]
    rounds = sorted({r for chart in charts for r in chart.rounds})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for r in rounds:
        writer.writerow([r] + ["" if (v := values.get(r)) is None else repr(v) for values in lookup])
    return out.getvalue()


def client_distance_chart(updates: Sequence[ClientUpdate]) -> Chart:
    """One client's distance to each round's aggregate, beside the round's outlier threshold."""
    measured = [u for u in updates if u.round_number is not None and u.figures.get("distance") is not None]
    own = tuple(sorted((u.round_number, u.figures["distance"]) for u in measured))
    threshold = tuple(sorted((u.round_number, u.threshold) for u in measured if u.threshold is not None))
    return Chart(
        key="client-distance",
        title="Distance to the round's aggregate",
        description="this client's update's Euclidean distance to its round's aggregate, and the round's "
        "outlier threshold (median + 3 × 1.4826 × MAD of the round's distances), per round",
        y_label="distance (L2)",
        series=(Series("this client", own), Series("outlier threshold", threshold)),
        from_zero=True,
    )
