"""``/readyz`` of the real fma-server with each dependency taken down and brought back (issue 20, item 1):
PostgreSQL, the S3 weight store (SeaweedFS's S3 gateway, the session's) and the Celery broker (Redis) each sit behind a
``Switch``; unapplied migrations are made by forgetting one in the server's own database.
``/healthz`` answers all along: the process is up, whatever its dependencies do."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
import requests

from .switch import Switch

ADMIN = os.environ.get("FMA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/fma").rsplit("/", 1)[0]
BUCKET = "fma-readiness"


def _reachable(host: str, port: int, name: str) -> None:
    import socket

    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not reachable on {host}:{port}, and CI needs it")
        pytest.skip(f"needs {name} on {host}:{port}")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh PostgreSQL database of this module's own."""
    parts = urlsplit(ADMIN)
    _reachable(parts.hostname or "127.0.0.1", parts.port or 5432, "PostgreSQL")
    name = f"fma_readiness_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN + "/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield name
    with psycopg.connect(ADMIN + "/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def switches(database, seaweedfs) -> Iterator[dict[str, Switch]]:
    _reachable("127.0.0.1", 6379, "Redis")
    seaweedfs.client().create_bucket(Bucket=BUCKET)
    endpoint = urlsplit(seaweedfs.endpoint)
    parts = urlsplit(ADMIN)
    made = {
        "database": Switch((parts.hostname or "127.0.0.1", parts.port or 5432)),
        "weight_store": Switch((endpoint.hostname, endpoint.port)),
        "broker": Switch(("127.0.0.1", 6379)),
    }
    yield made
    for switch in made.values():
        switch.close()


@pytest.fixture(scope="module")
def server(serve_for_module, switches, database, seaweedfs) -> str:
    """One server whose every dependency goes through a switch; readiness is never kept between probes."""
    parts = urlsplit(ADMIN)
    user = f"{parts.username}@" if parts.username else ""
    return serve_for_module(
        FMA_DEVELOPMENT="1",
        FMA_WORKERS="1",
        FMA_READY_CACHE_SECONDS="0",
        FMA_DATABASE_URL=f"postgresql://{user}127.0.0.1:{switches['database'].port}/{database}",
        FMA_DB_CONN_MAX_AGE="60",
        FMA_WEIGHT_STORE="s3",
        FMA_S3_BUCKET=BUCKET,
        FMA_S3_ENDPOINT_URL=f"http://127.0.0.1:{switches['weight_store'].port}",
        FMA_S3_ADDRESSING_STYLE="path",
        FMA_AGGREGATOR_RUNNER="celery",
        FMA_BROKER_URL=f"redis://127.0.0.1:{switches['broker'].port}/0",
        FMA_BROKER_TIMEOUT="2",
        AWS_ACCESS_KEY_ID=seaweedfs.access_key,
        AWS_SECRET_ACCESS_KEY=seaweedfs.secret_key,
        AWS_DEFAULT_REGION=seaweedfs.region,
    ).url


def _probe(url: str) -> tuple[int, dict]:
    answer = requests.get(url + "/readyz", timeout=60)
    return answer.status_code, answer.json()


ALL_OK = {"database": "ok", "migrations": "ok", "weight_store": "ok", "broker": "ok"}


def test_ready_when_every_dependency_answers(server):
    assert _probe(server) == (200, {"status": "ready", "checks": ALL_OK})


@pytest.mark.parametrize("dependency", ["database", "weight_store", "broker"])
def test_not_ready_while_a_dependency_is_down_and_ready_again_when_it_is_back(server, switches, dependency):
    switches[dependency].down()
    try:
        status, body = _probe(server)
        assert status == 503
        assert body["status"] == "not_ready"
        assert body["checks"][dependency].startswith("unavailable (")
        others = {name: result for name, result in body["checks"].items() if name != dependency}
        if dependency == "database":
            assert others.pop("migrations") == "not checked (database unavailable)"
        assert set(others.values()) == {"ok"}
        health = requests.get(server + "/healthz", timeout=60)
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
    finally:
        switches[dependency].back_up()
    assert _probe(server) == (200, {"status": "ready", "checks": ALL_OK})


def test_not_ready_while_a_migration_is_not_applied(server, database):
    with psycopg.connect(f"{ADMIN}/{database}", autocommit=True) as connection:
        app, name = connection.execute(
            "SELECT app, name FROM django_migrations WHERE app = 'fma_django' ORDER BY name DESC LIMIT 1"
        ).fetchone()
        connection.execute("DELETE FROM django_migrations WHERE app = %s AND name = %s", (app, name))
        try:
            status, body = _probe(server)
            assert status == 503
            assert body["checks"] == {**ALL_OK, "migrations": "1 migrations not applied"}
        finally:
            connection.execute(
                "INSERT INTO django_migrations (app, name, applied) VALUES (%s, %s, now())", (app, name)
            )
    assert _probe(server)[0] == 200
