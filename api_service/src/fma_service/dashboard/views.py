"""Thin views: scope rows through the selectors, render, and hand every change to ``fma_django.services``."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_POST

from fma_django import selectors as fma_selectors
from fma_django import services
from fma_django.errors import ValidationFailed
from fma_django.models import Experiment
from fma_service.dashboard import charts
from fma_service.dashboard import selectors as dashboard
from fma_service.dashboard.forms import AggregationForm, PublishForm

# The regions of the detail page that the page's script replaces as rounds complete.
LIVE_SECTIONS = ("summary", "plots", "rounds", "problems", "lineage")


def _experiment(request: HttpRequest, pk: int) -> Experiment:
    """The experiment if the user may see it; 404 otherwise, never revealing that it exists."""
    return get_object_or_404(fma_selectors.experiments_visible(request.user), pk=pk)


@require_GET
@login_required
def experiment_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboard/experiment_list.html",
        {"summaries": dashboard.experiment_summaries(request.user)},
    )


def _metric_charts(experiment: Experiment) -> list[charts.LineChart]:
    """One chart per reported metric: the clients' evaluations first, then what came with updates."""
    combined = fma_selectors.aggregate_metrics(experiment)
    result = []
    for source, caption in (
        ("evaluation", "clients' evaluation of each aggregate"),
        ("training", "reported with the updates of each round"),
    ):
        names = sorted({name for item in combined for name in getattr(item, source)})
        for name in names:
            series = [
                (item.aggregate.round_number, getattr(item, source)[name].weighted_mean)
                for item in combined
                if name in getattr(item, source)
            ]
            result.append(
                charts.line_chart(
                    key=f"{source}-{name}",
                    title=f"{name} — {caption}",
                    description=f"{name}, mean weighted by examples, per round",
                    series=series,
                )
            )
    return result


def _detail_context(request: HttpRequest, experiment: Experiment) -> dict[str, Any]:
    rounds = dashboard.round_rows(experiment)
    return {
        "experiment": experiment,
        "summary": dashboard.experiment_summary(experiment),
        "rounds": rounds,
        "metric_charts": _metric_charts(experiment),
        "participation_chart": charts.line_chart(
            key="participation",
            title="Clients per round",
            description="number of clients whose updates each round aggregated",
            series=[(r.aggregate.round_number, r.clients) for r in rounds],
        ),
        "duration_chart": charts.line_chart(
            key="duration",
            title="Aggregation time per round (seconds)",
            description="seconds the aggregator spent on each round",
            series=[(r.aggregate.round_number, r.aggregate.duration_seconds) for r in rounds],
        ),
        "problems": dashboard.problem_events(experiment),
        "may_change": fma_selectors.experiments_owned(request.user).filter(pk=experiment.pk).exists(),
    }


@require_GET
@login_required
def experiment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = _experiment(request, pk)
    context = _detail_context(request, experiment)
    context["stamp"] = dashboard.experiment_stamp(context["summary"])
    return render(request, "dashboard/experiment_detail.html", context)


@require_GET
@login_required
def experiment_live(request: HttpRequest, pk: int) -> JsonResponse:
    """What the detail page polls: a stamp of the state and, when it differs from ``since``, each
    live region freshly rendered (an unchanged experiment costs a few counts, not five templates)."""
    experiment = _experiment(request, pk)
    summary = dashboard.experiment_summary(experiment)
    stamp = dashboard.experiment_stamp(summary)
    answer: dict[str, Any] = {
        "stamp": stamp,
        "state": summary.state,
        "current_round": summary.current_round,
        "sections": {},
    }
    if request.GET.get("since") != stamp:
        context = _detail_context(request, experiment)
        answer["sections"] = {
            name: render_to_string(f"dashboard/_{name}.html", context, request=request)
            for name in LIVE_SECTIONS
        }
    return JsonResponse(answer)


@require_POST
@login_required
def aggregate_publish(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = get_object_or_404(fma_selectors.experiments_owned(request.user), pk=pk)
    form = PublishForm(request.POST)
    if not form.is_valid():
        messages.error(request, "To publish, give the aggregate a version name.")
        return redirect("dashboard:experiment", pk=experiment.pk)
    aggregate = get_object_or_404(experiment.aggregates, pk=form.cleaned_data["aggregate"])
    try:
        artifact = services.aggregate_publish(
            aggregate=aggregate, version=form.cleaned_data["version"], user=request.user
        )
    except ValidationFailed as error:
        messages.error(request, error.detail)
    else:
        messages.success(
            request, f"Round {aggregate.round_number} is published as version {artifact.version}."
        )
    return redirect("dashboard:experiment", pk=experiment.pk)


@require_POST
@login_required
def experiment_aggregation(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = get_object_or_404(fma_selectors.experiments_owned(request.user), pk=pk)
    form = AggregationForm(request.POST)
    if form.is_valid():
        allowed = form.cleaned_data["allowed"]
        services.experiment_set_aggregation(experiment=experiment, allowed=allowed, user=request.user)
        messages.success(request, "Rounds are resumed." if allowed else "Rounds are paused.")
    else:
        messages.error(request, "Choose pause or resume.")
    return redirect("dashboard:experiment", pk=experiment.pk)
