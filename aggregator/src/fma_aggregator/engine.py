"""The round engine every runner uses: fma-core's RoundEngine over the service's database and weight store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import close_old_connections, connection

from fma_aggregator.config import AggregatorConfig
from fma_core.rounds import RoundEngine
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore


def build_engine(config: AggregatorConfig | None = None, *, worker_id: str | None = None) -> RoundEngine:
    config = config or AggregatorConfig.from_env()
    return RoundEngine(
        DjangoMetadataStore(),
        weight_store(),
        worker_id=worker_id,
        lease_seconds=config.lease_seconds,
        shard_bytes=config.shard_bytes,
    )


@contextmanager
def fresh_connection() -> Iterator[None]:
    """Around one unit of work in a long-lived worker: drop a broken or stale database connection
    before, and close this thread's connection after, so idle workers hold no connection open."""
    close_old_connections()
    try:
        yield
    finally:
        connection.close()
