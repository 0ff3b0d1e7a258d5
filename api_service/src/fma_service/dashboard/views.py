"""Thin views: scope rows through the selectors, render, and hand every change to ``fma_django.services``."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from fma_django import lifecycle, services
from fma_django import selectors as fma_selectors
from fma_django.errors import Conflict, ValidationFailed
from fma_django.models import Experiment
from fma_service.dashboard import charts, live
from fma_service.dashboard import clients as client_rows
from fma_service.dashboard import selectors as dashboard
from fma_service.dashboard.forms import PublishForm, StateForm


def _experiment(request: HttpRequest, pk: int) -> Experiment:
    """The experiment if the user may see it; 404 otherwise, never revealing that it exists."""
    return get_object_or_404(
        fma_selectors.experiments_visible(request.user).select_related("current_artifact"), pk=pk
    )


def _may_change(request: HttpRequest, experiment: Experiment) -> bool:
    return fma_selectors.experiments_owned(request.user).filter(pk=experiment.pk).exists()


@require_GET
@login_required
def experiment_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboard/experiment_list.html",
        {"summaries": dashboard.experiment_summaries(request.user)},
    )


@require_GET
@login_required
def experiment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The whole page, each region with the cursor its polls start from."""
    experiment = _experiment(request, pk)
    may_change = _may_change(request, experiment)
    summary, regions = live.regions(request, experiment, seen={}, may_change=may_change)
    return render(
        request,
        "dashboard/experiment_detail.html",
        {
            "experiment": experiment,
            "summary": summary,
            "regions": regions,
            "may_change": may_change,
            "settings": dashboard.experiment_settings(experiment),
            # a finished experiment resumes only once its finish_when no longer holds
            "resumable": experiment.state == "paused"
            or (experiment.state == "finished" and lifecycle.finish_reason(experiment) is None),
        },
    )


@require_GET
@login_required
def experiment_live(request: HttpRequest, pk: int) -> JsonResponse:
    """What the detail page polls, with each region's cursor in the query (``?rounds=12&...``):
    only the regions that changed since, and of a table or the charts only their new rows."""
    experiment = _experiment(request, pk)
    seen = {name: request.GET.get(name) for name in live.REGIONS}
    summary, regions = live.regions(
        request, experiment, seen=seen, may_change=_may_change(request, experiment)
    )
    return JsonResponse(
        {
            "state": summary.state,
            "current_round": summary.current_round,
            "regions": {name: region.as_dict() for name, region in regions.items()},
        }
    )


@require_GET
@login_required
def experiment_clients(request: HttpRequest, pk: int) -> HttpResponse:
    """Every client of the experiment with its participation, refusals and outlier rounds."""
    experiment = _experiment(request, pk)
    return render(
        request,
        "dashboard/client_list.html",
        {"experiment": experiment, "clients": client_rows.experiment_clients(experiment)},
    )


@require_GET
@login_required
def client_detail(request: HttpRequest, pk: int, client: UUID) -> HttpResponse:
    """One client's updates to the experiment, round by round, as each round measured and used them."""
    experiment = _experiment(request, pk)
    found = client_rows.enrolled_client(experiment, str(client))
    if found is None:
        raise Http404("No such client in this experiment.")
    updates = client_rows.client_updates(experiment, found)
    selected, drawn = client_rows.client_selections(experiment, found)
    return render(
        request,
        "dashboard/client_detail.html",
        {
            "experiment": experiment,
            "client": found,
            "updates": updates,
            "rejections": client_rows.client_rejections(experiment, found),
            "selected": selected,
            "drawn": drawn,
            "charts": [charts.client_distance_chart(updates)],
        },
    )


def _experiment_charts(experiment: Experiment) -> list[charts.Chart]:
    rows = dashboard.round_rows(experiment, with_inputs=False)
    metrics = fma_selectors.aggregate_metrics(experiment)
    return charts.metric_charts(metrics, experiment.evaluation_goals) + charts.round_charts(rows)


def _csv(name: str, body: str) -> HttpResponse:
    answer = HttpResponse(body, content_type="text/csv; charset=utf-8")
    answer["Content-Disposition"] = f'attachment; filename="{name}"'
    return answer


@require_GET
@login_required
def experiment_csv(request: HttpRequest, pk: int) -> HttpResponse:
    """Every chart of the experiment as one CSV file, a row per round, at full precision."""
    experiment = _experiment(request, pk)
    return _csv(f"experiment-{experiment.pk}-rounds.csv", charts.as_csv(_experiment_charts(experiment)))


@require_GET
@login_required
def experiments_compare(request: HttpRequest) -> HttpResponse:
    """One chart of several of the user's experiments on the same axes (run comparison), chosen in
    the query (``?experiment=3&experiment=5&chart=evaluation-accuracy``): an experiment the user
    may not see is a 404, as on its own page. ``?format=csv`` gives the chart's values as a file."""
    visible = fma_selectors.experiments_visible(request.user).order_by("-pk")
    asked = request.GET.getlist("experiment")
    if not all(value.isascii() and value.isdigit() and len(value) < 19 for value in asked):
        raise Http404("No such experiment.")
    ids = {int(value) for value in asked}
    chosen = list(visible.filter(pk__in=ids).order_by("pk"))
    if len(chosen) != len(ids):
        raise Http404("No such experiment.")
    by_experiment = [(e, {c.key: c for c in _experiment_charts(e)}) for e in chosen]
    keys = sorted({key for _, found in by_experiment for key in found}, key=_chart_order)
    key = request.GET.get("chart") if request.GET.get("chart") in keys else (keys[0] if keys else None)
    chart = None
    if key is not None:
        chart = charts.overlay(key, [(f"{e.name} #{e.pk}", found.get(key)) for e, found in by_experiment])
    if request.GET.get("format") == "csv" and chart is not None:
        return _csv(f"compare-{key}.csv", charts.as_csv([chart]))
    as_file = request.GET.copy()
    as_file["format"] = "csv"
    return render(
        request,
        "dashboard/compare.html",
        {
            "experiments": visible,
            "chosen": ids,
            "keys": keys,
            "key": key,
            "chart": chart,
            "csv_query": as_file.urlencode(),
        },
    )


def _chart_order(key: str) -> tuple[bool, str]:
    """Metric charts first, by name, then participation and duration (as on an experiment's page)."""
    return key in ("participation", "duration"), key


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
def experiment_set_state(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = get_object_or_404(fma_selectors.experiments_owned(request.user), pk=pk)
    form = StateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose pause, resume or stop.")
        return redirect("dashboard:experiment", pk=experiment.pk)
    try:
        lifecycle.experiment_set_state(
            experiment=experiment,
            state=form.cleaned_data["state"],
            reason=form.cleaned_data["reason"],
            user=request.user,
        )
    except (Conflict, ValidationFailed) as error:
        messages.error(request, error.detail)
    else:
        done = {
            "collecting": "Rounds are resumed.",
            "paused": "Rounds are paused.",
            "stopped": "The experiment is stopped.",
        }
        messages.success(request, done[experiment.state])
    return redirect("dashboard:experiment", pk=experiment.pk)
