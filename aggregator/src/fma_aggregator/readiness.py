"""Is this deployment able to serve? The checks behind ``/readyz`` and the aggregator Lambda's
scheduled ``{"fma": "readiness"}`` check: the database answers, every migration of this code is
applied, the weight store answers, and the broker answers where the runner is Celery.

It lives here, beside the runners, because only the aggregator knows whether there is a broker.
Results are kept ``FMA_READY_CACHE_SECONDS`` (default 5) per process, so a probe every second
from several load balancers costs the database and the store one round trip each per period.
A failed check says which dependency and the error's type, never its message (which may carry a
host name or credentials); the full error goes to the log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from fma_aggregator.config import AggregatorConfig, runner_name
from fma_django.storage import weight_store

logger = logging.getLogger(__name__)

PROBE_KEY = "readiness/probe"  # asked about, never written: a missing object is an answer too


@dataclass(frozen=True)
class Readiness:
    """``checks``: each dependency → ``"ok"`` or what failed."""

    checks: dict[str, str]
    checked_at: float

    @property
    def ready(self) -> bool:
        return all(result == "ok" for result in self.checks.values())


def check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def check_migrations() -> str:
    executor = MigrationExecutor(connection)
    unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return "ok" if not unapplied else f"{len(unapplied)} migrations not applied"


def check_weight_store() -> str:
    weight_store().exists(PROBE_KEY)
    return "ok"


def check_broker() -> str:
    from kombu import Connection

    config = AggregatorConfig.from_env()
    timeout = config.broker_timeout
    options = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    with Connection(config.broker_url, connect_timeout=timeout, transport_options=options) as broker:
        broker.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        broker.default_channel  # noqa: B018 - Redis connects only when a channel is opened
    return "ok"


def _checks() -> dict[str, Callable[[], str]]:
    checks = {"database": check_database, "migrations": check_migrations, "weight_store": check_weight_store}
    if runner_name() == "celery":
        checks["broker"] = check_broker
    return checks


def _run(name: str, check: Callable[[], str]) -> str:
    try:
        return check()
    except Exception as error:
        logger.warning("readiness: the %s check failed: %s", name, error)
        return f"unavailable ({type(error).__name__})"


def check_readiness() -> Readiness:
    """Run every check now. The migrations check needs the database, so it is skipped when it is down."""
    results: dict[str, str] = {}
    for name, check in _checks().items():
        if name == "migrations" and results.get("database") != "ok":
            results[name] = "not checked (database unavailable)"
        else:
            results[name] = _run(name, check)
    return Readiness(results, time.time())


_lock = threading.Lock()
_last: Readiness | None = None


def readiness() -> Readiness:
    """The last result if younger than ``FMA_READY_CACHE_SECONDS``, else a new one (one at a time)."""
    global _last
    ttl = float(os.environ.get("FMA_READY_CACHE_SECONDS", "5"))
    with _lock:
        if _last is None or time.time() - _last.checked_at >= ttl:
            _last = check_readiness()
        return _last
