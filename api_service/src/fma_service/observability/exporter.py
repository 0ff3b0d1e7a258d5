"""Metrics on a separate address (``FMA_METRICS_ADDRESS``, ``host:port``): the second way to keep them
private, besides ``/metrics`` with its token. A plain HTTP listener in a thread of fma-server's main
process, or of a Celery worker's main process (its prefork children write to the multiprocess
directory, which the listener sums); bind it to an address only the monitoring network reaches."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.conf import settings
from django.db import connection
from prometheus_client import start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from fma_service.observability.prometheus import scrape_registry

logger = logging.getLogger(__name__)


class _Scrape(Collector):
    """What ``/metrics`` would answer, for prometheus_client's listener; the listener's thread closes
    the database connection its scrape opened."""

    def __init__(self, *, waiting: bool) -> None:
        self.waiting = waiting

    def collect(self) -> Iterator[Metric]:
        try:
            yield from scrape_registry(waiting=self.waiting).collect()
        finally:
            connection.close()


def serve(address: str, *, waiting: bool) -> None:
    """Listen on ``host:port``; ``waiting``: include the database's gauges (once per deployment is enough)."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=_Scrape(waiting=waiting))
    logger.info("metrics served on http://%s/metrics", address)


def serve_for_worker(**kwargs: object) -> None:
    """Celery's ``worker_init``: a worker's own figures (rounds, sweeps) on ``FMA_METRICS_ADDRESS``."""
    if settings.FMA_METRICS_ADDRESS:
        serve(settings.FMA_METRICS_ADDRESS, waiting=False)
