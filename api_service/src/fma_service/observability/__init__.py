"""Health, readiness and metrics of the service: ``/healthz``, ``/readyz`` and ``/metrics`` (``views``),
FMA's own Prometheus metrics (``prometheus``), and the exporter on a separate address (``exporter``).
A Django app, so every process that loads the settings (fma-server, Celery workers) records them."""
