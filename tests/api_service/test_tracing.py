"""Optional OpenTelemetry traces (issue 20, item 2): a push is a server span in the caller's trace, and
a round is a span with its own duration, caught by OpenTelemetry's in-memory exporter instead of OTLP."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from django.contrib.auth.models import User
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from fma_aggregator.engine import build_engine
from fma_core.weights import to_bytes
from fma_django import services
from fma_service.observability import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"  # W3C Trace Context, as a traced client sends it


@pytest.fixture
def spans(settings) -> Iterator[InMemorySpanExporter]:
    settings.MIDDLEWARE = ["fma_service.observability.tracing.TracingMiddleware", *settings.MIDDLEWARE]
    exporter = InMemorySpanExporter()
    tracing.install(exporter, batch=False)
    yield exporter
    tracing.uninstall()


def test_a_push_and_its_round_are_traced(spans, client, transactional_db):
    developer = User.objects.create_user("tracer", password="a-password-for-tests")
    experiment = services.experiment_create(developer=developer, name="traced", open_enrollment=True)
    path = f"/api/v1/models/{experiment.pk}/"
    credential = client.post(path + "register_client/").json()["credential"]
    pushed = client.post(
        path + "upload_update/",
        data=to_bytes({"w": np.ones(8, dtype=np.float32)}),
        content_type="application/octet-stream",
        headers={
            "Authorization": f"Client {credential}",
            "X-FMA-Num-Examples": "3",
            "traceparent": TRACEPARENT,
        },
    )
    assert pushed.status_code == 201, pushed.content
    assert build_engine().run_round(str(experiment.pk)).status == "committed"

    by_name = {span.name: span for span in spans.get_finished_spans()}
    push = by_name["POST fma-api:model-upload-update"]
    assert push.kind == SpanKind.SERVER
    assert format(push.context.trace_id, "032x") == TRACE_ID  # in the caller's trace
    assert push.attributes["http.response.status_code"] == 201
    assert push.attributes["http.route"] == "fma-api:model-upload-update"
    register = by_name["POST fma-api:model-register-client"]
    assert format(register.context.trace_id, "032x") != TRACE_ID  # no traceparent: a trace of its own

    round_span = by_name["fma.round"]
    assert round_span.attributes["fma.experiment_id"] == str(experiment.pk)
    assert round_span.attributes["fma.outcome"] == "completed"
    assert round_span.attributes["fma.updates"] == 1
    assert round_span.attributes["fma.aggregate_bytes"] > 32
    assert round_span.end_time >= round_span.start_time
    assert round_span.status.status_code != StatusCode.ERROR


def test_without_the_exporter_installed_nothing_is_traced(settings, client, transactional_db):
    settings.MIDDLEWARE = ["fma_service.observability.tracing.TracingMiddleware", *settings.MIDDLEWARE]
    exporter = InMemorySpanExporter()
    tracing.install(exporter, batch=False)
    tracing.uninstall()
    assert client.get("/healthz").status_code == 200
    assert exporter.get_finished_spans() == ()
