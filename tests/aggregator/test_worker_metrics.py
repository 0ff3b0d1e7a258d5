"""A Celery worker's own metrics (issue 20, item 2): its prefork children count the rounds they run in
Prometheus's multiprocess directory, and the worker's main process serves the sum on
``FMA_METRICS_ADDRESS`` (no token: an address of the monitoring network's), without the
database's gauges, which the API's scrape gives once per deployment."""

from __future__ import annotations

import pytest
import requests
from aggregator_support import celery_worker_args, free_port, service_available, submit, wait_for
from prometheus_client.parser import text_string_to_metric_families

from fma_django.models import ModelAggregate

pytestmark = pytest.mark.usefixtures("require_postgresql")


def samples(url: str) -> dict[tuple[str, frozenset], float] | None:
    try:
        answer = requests.get(url, timeout=10)
    except requests.ConnectionError:
        return None
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_a_prefork_worker_serves_the_rounds_its_children_ran(
    settings, make_experiment, worker_env, processes, tmp_path
):
    service_available("127.0.0.1", 6379, "Redis")
    address = f"127.0.0.1:{free_port()}"
    directory = tmp_path / "prometheus"
    directory.mkdir()
    args = celery_worker_args("metrics", beat=False, tmp_path=tmp_path)
    args[args.index("solo")] = "prefork"
    worker = processes(
        [*args, "-c", "2"], worker_env(FMA_METRICS_ADDRESS=address, PROMETHEUS_MULTIPROC_DIR=str(directory))
    )
    url = f"http://{address}/metrics"
    wait_for(lambda: samples(url), what=f"the worker's metrics address; log:\n{worker.output()}")

    settings.FMA_AGGREGATOR_RUNNER = "celery"
    experiment = make_experiment(round_policy={"policy": "require_x_updates", "x": 2})
    submit(experiment, 1.0)
    submit(experiment, 2.0)
    wait_for(
        lambda: ModelAggregate.objects.filter(experiment=experiment).exists(),
        what=f"the Celery round; worker log:\n{worker.output()}",
    )
    completed = ("fma_rounds_total", frozenset({("outcome", "completed"), ("experiment", "")}))
    scraped = wait_for(lambda: (s := samples(url)) and s.get(completed) == 1 and s, what="the round counted")
    assert (
        scraped[
            ("fma_round_duration_seconds_count", frozenset({("outcome", "completed"), ("experiment", "")}))
        ]
        == 1
    )
    assert not any(name == "fma_rounds_pending" for name, _ in scraped)  # the API's scrape has those
    assert list(directory.iterdir())  # the children wrote their figures there
