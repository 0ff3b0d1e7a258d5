"""Installs the recorder of FMA's figures that ``FMA_METRICS`` names: Prometheus (and the exporter of a
Celery worker when ``FMA_METRICS_ADDRESS`` is set), or CloudWatch's embedded metric format on Lambda;
and OpenTelemetry's exporter where an OTLP endpoint is set."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings


class ObservabilityConfig(AppConfig):
    name = "fma_service.observability"
    label = "fma_observability"
    verbose_name = "FMA observability"

    def ready(self) -> None:
        from fma_django import telemetry

        if settings.FMA_TRACING:
            from fma_service.observability import tracing

            tracing.install()
        if settings.FMA_METRICS == "emf":
            from fma_aggregator import emf

            telemetry.add_recorder(emf.record)
        if settings.FMA_METRICS != "prometheus":
            return
        from fma_service.observability import exporter, prometheus

        telemetry.add_recorder(prometheus.record)
        try:
            from celery.signals import worker_init
        except ImportError:  # Celery is fma-aggregator's extra: without it, no worker to serve metrics from
            return
        worker_init.connect(exporter.serve_for_worker, weak=False, dispatch_uid="fma_service.exporter")
