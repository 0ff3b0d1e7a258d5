"""Fixtures for the aggregator: experiments with enrolled clients, updates, live workers in subprocesses.

Services (PostgreSQL, Redis, RabbitMQ) are used for real. A missing one skips its tests on a
developer's machine and fails them under CI=true, never silently.
"""

from __future__ import annotations

import itertools
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User

sys.path.insert(0, str(Path(__file__).parent))  # aggregator_support and slow_store, for tests and workers

from aggregator_support import HERE, SHAPES, Process, weights

from fma_django import services
from fma_django.models import Experiment

# Tasks of this test run go to a queue of their own, so other suites sharing the broker never take them.
os.environ.setdefault("FMA_CELERY_QUEUE", f"fma-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def developer(transactional_db) -> User:
    return User.objects.create_user("dev", password="dev-password")


@pytest.fixture
def weights_dir(settings, tmp_path: Path) -> Path:
    settings.FMA_WEIGHTS_DIR = tmp_path / "weights"
    return settings.FMA_WEIGHTS_DIR


@pytest.fixture
def make_experiment(developer: User, weights_dir: Path) -> Callable[..., Experiment]:
    numbers = itertools.count(1)

    def create(shapes: dict = SHAPES, **config: object) -> Experiment:
        number = next(numbers)  # names are unique per developer
        config.setdefault("name", "exp" if number == 1 else f"exp {number}")
        return services.experiment_create(
            developer=developer, open_enrollment=True, initial_model=weights(0.0, shapes), **config
        )

    return create


@pytest.fixture
def worker_env(require_postgresql, weights_dir: Path, tmp_path: Path) -> Callable[..., dict[str, str]]:
    """The environment of a worker process sharing this test's PostgreSQL database and weight directory."""
    from django.db import connection

    name = connection.settings_dict["NAME"]

    def env(**extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "fma_service.settings",
            "FMA_DEVELOPMENT": "1",
            "FMA_DATA_DIR": str(tmp_path / "worker-data"),
            "FMA_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
            "FMA_DB_CONN_MAX_AGE": "0",
            "FMA_WEIGHTS_DIR": str(weights_dir),
            "FMA_AGGREGATION_THREADS": "1",
            "FMA_SWEEP_SECONDS": "1",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            **extra,
        }

    return env


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start worker processes; every one still running is stopped when the test ends."""
    started: list[Process] = []

    def start(args: list[str], env: dict[str, str]) -> Process:
        process = Process(args, env, tmp_path / f"worker-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:  # all asked first: their graceful stops overlap instead of adding up
        process.terminate()
    for process in started:
        process.stop()
