"""Throttles count in the cache every API process shares: two `fma-server` processes on one database
(SQLite in the SQLite pass, PostgreSQL in the PostgreSQL pass) and its database cache, or on one Redis
(``FMA_CACHE_URL``), refuse the request that goes over the rate, whichever process it reaches.
Per-process counting (Django's default local-memory cache) would let each process answer its own
quota."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

REDIS = ("127.0.0.1", 6379)
BEHIND_TLS = {"X-Forwarded-Proto": "https"}


def _env(data_dir: Path, port: int, shared: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMA_", "DJANGO_"))}
    return {
        **env,
        **shared,
        "FMA_DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "fma_service.settings",
        "FMA_SECRET_KEY": "test-key",
        "FMA_BIND": f"127.0.0.1:{port}",
        "FMA_WORKERS": "1",
        "FMA_THROTTLE_LOGIN": "4/hour",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _server(data_dir: Path, log: Path, shared: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fma_service"],
            env=_env(data_dir, port, shared),
            stdout=output,
            stderr=output,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fma-server did not come up: {log.read_text()}")
            try:
                requests.get(url + "/healthz", timeout=10, allow_redirects=False)
                break
            except requests.RequestException:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def _login(url: str, number: int) -> int:
    body = {"username": f"nobody{number}", "password": "not the password"}
    # production settings: as if behind the TLS-terminating proxy, else plain http is redirected
    return requests.post(url + "/api-token-auth/", json=body, headers=BEHIND_TLS, timeout=60).status_code


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the servers in the PostgreSQL pass; SQLite (unset) otherwise."""
    if os.environ.get("FMA_TEST_DATABASE") != "postgresql":
        yield ""
        return
    import psycopg

    admin = os.environ.get("FMA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/fma").rsplit(
        "/", 1
    )[0]
    name = f"fma_throttle_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin + "/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{admin}/{name}"
    finally:
        with psycopg.connect(admin + "/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["database", "redis"])
def shared_cache(request, database_url: str) -> dict[str, str]:
    """The servers' settings: the database cache on one database, or one Redis under a prefix of this test's own."""
    shared = {"FMA_DATABASE_URL": database_url} if database_url else {}
    if request.param == "database":
        return shared
    try:
        socket.create_connection(REDIS, timeout=2).close()
    except OSError:
        if os.environ.get("CI") == "true":
            pytest.fail("Redis is not reachable on 127.0.0.1:6379, and CI needs it")
        pytest.skip("needs Redis on 127.0.0.1:6379")
    return {**shared, "FMA_CACHE_URL": "redis://127.0.0.1:6379/0", "FMA_CACHE_KEY_PREFIX": uuid.uuid4().hex}


def test_the_login_throttle_is_shared_by_two_server_processes(tmp_path, shared_cache):
    with (
        _server(tmp_path, tmp_path / "first.log", shared_cache) as first,
        _server(tmp_path, tmp_path / "second.log", shared_cache) as second,
    ):
        answers = [_login(url, number) for number, url in enumerate([first, second, first, second])]
        assert answers == [400, 400, 400, 400]
        assert _login(first, 4) == 429
        assert _login(second, 5) == 429


def _cache_backend(tmp_path: Path, url: str) -> subprocess.CompletedProcess:
    env = {**_env(tmp_path, 0, {}), "FMA_CACHE_URL": url}
    code = "import django; django.setup(); from django.conf import settings; print(settings.CACHES['default']['BACKEND'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_fma_cache_url_selects_redis_and_refuses_anything_else(tmp_path):
    assert _cache_backend(tmp_path, "redis://cache.internal:6379/1").stdout.strip() == (
        "django.core.cache.backends.redis.RedisCache"
    )
    refused = _cache_backend(tmp_path, "memcached://cache.internal:11211")
    assert refused.returncode != 0
    assert "FMA_CACHE_URL must be a redis:// URL" in refused.stderr
