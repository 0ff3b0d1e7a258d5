"""The operators' files in monitoring/ (issue 20, item 5): the alert rules and the Grafana dashboard
are well formed, and every metric they name is one the service exposes (names checked against a
scrape of this process's registry, where every metric is declared whether or not it has counted)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from django_prometheus.middleware import Metrics
from prometheus_client.parser import text_string_to_metric_families

from fma_service.observability.prometheus import scrape

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
NAME = re.compile(r"\b(?:fma|django_http)_[a-z_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.fixture
def exposed(db) -> set[str]:
    Metrics.get_instance()  # django-prometheus declares its metrics with its first middleware
    families = text_string_to_metric_families(scrape(waiting=True).decode())
    return {family.name + suffix for family in families for suffix in SUFFIXES.get(family.type, ("",))}


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((MONITORING / "prometheus-rules.yml").read_text())
    (group,) = rules["groups"]
    for rule in group["rules"]:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["labels"]["severity"] in {"page", "warning"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
    return [rule["expr"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"]
    assert dashboard["panels"]
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.mark.parametrize("expressions", [rule_expressions, dashboard_expressions], ids=["rules", "dashboard"])
def test_every_metric_named_is_one_the_service_exposes(exposed, expressions):
    named = {name for expression in expressions() for name in NAME.findall(expression)}
    assert named, "no metric named at all"
    assert named <= exposed, f"not exposed: {sorted(named - exposed)}"


def test_the_waiting_gauges_and_every_fma_counter_are_covered_by_the_dashboard(exposed):
    named = {name for expression in dashboard_expressions() for name in NAME.findall(expression)}
    fma = {
        name
        for name in exposed
        if name.startswith("fma_") and not name.endswith(("_bucket", "_sum", "_count", "_created"))
    }
    assert fma - named == set()
