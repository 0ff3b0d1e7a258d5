"""Optional OpenTelemetry traces: a span per API request (so a push is its upload session's requests,
each in the caller's trace when it sends ``traceparent``) and a span per round, exported over OTLP.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set and the
``tracing`` extra is installed (``pip install 'fma-service[tracing]'``: the OpenTelemetry SDK and
its OTLP/HTTP exporter); the exporter reads the other ``OTEL_*`` variables itself (headers,
service name in ``OTEL_SERVICE_NAME``). A round's span is made from its event when the round
ends, with the round's own start (its claim) and duration, in the process that ran it.

The provider is this module's own, not OpenTelemetry's global one, so installing it twice (or a
test's in-memory exporter) replaces it cleanly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from fma_django import telemetry
from fma_django.telemetry import Observation

_tracer = None
_provider = None


def install(exporter: object | None = None, *, batch: bool = True) -> None:
    """Export spans to ``exporter`` (default: OTLP over HTTP, configured by ``OTEL_*``), and trace rounds."""
    global _tracer, _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    uninstall()
    _provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "fma")})
    )
    _provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    _tracer = _provider.get_tracer("fma")
    telemetry.add_recorder(_round_span)


def uninstall() -> None:
    global _tracer, _provider
    telemetry.remove_recorder(_round_span)
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def _round_span(observation: Observation) -> None:
    if _tracer is None or observation.name not in {"round_completed", "round_failed"}:
        return
    end = time.time_ns()
    start = end - int((observation.seconds or 0.0) * 1e9)
    attributes = {
        "fma.experiment_id": observation.experiment_id or "",
        "fma.outcome": observation.name.removeprefix("round_"),
    }
    if observation.updates is not None:
        attributes["fma.updates"] = observation.updates
    if observation.size_bytes is not None:
        attributes["fma.aggregate_bytes"] = observation.size_bytes
    span = _tracer.start_span("fma.round", start_time=start, attributes=attributes)
    if observation.name == "round_failed":
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, "round failed"))
    span.end(end_time=end)


class TracingMiddleware:
    """A span per request, named after its route (bounded), child of the caller's ``traceparent`` if any."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if _tracer is None:
            return self.get_response(request)
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, Status, StatusCode

        context = extract({key.lower(): value for key, value in request.headers.items()})
        with _tracer.start_as_current_span(
            f"{request.method} request", context=context, kind=SpanKind.SERVER
        ) as span:
            response = self.get_response(request)
            match = request.resolver_match
            route = match.view_name if match else "unrouted"
            span.update_name(f"{request.method} {route}")
            span.set_attribute("http.request.method", request.method or "")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response
