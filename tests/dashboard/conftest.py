"""Fixtures for the dashboard: two developers, each with an experiment, and rounds run for real.

Rounds are made the way a deployment makes them: clients' updates through the services (or over
HTTP in the browser tests) and the round engine committing the aggregate.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from django.contrib.auth.models import User

from fma_core.rounds import RoundEngine
from fma_core.weights import to_bytes
from fma_django import ingestion, services
from fma_django.models import Client, Experiment, ModelAggregate
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

INITIAL = {"dense": np.zeros((4, 3), dtype=np.float32), "bias": np.zeros(3, dtype=np.float32)}


@pytest.fixture
def weights_dir(settings, tmp_path):
    settings.FMA_WEIGHTS_DIR = tmp_path / "weights"
    return settings.FMA_WEIGHTS_DIR


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice", password="alice-password")


@pytest.fixture
def bob(db) -> User:
    return User.objects.create_user("bob", password="bob-password")


@pytest.fixture
def make_experiment(weights_dir) -> Callable[..., Experiment]:
    def make(developer: User, name: str, **config: object) -> Experiment:
        return services.experiment_create(
            developer=developer, name=name, initial_model=dict(INITIAL), open_enrollment=True, **config
        )

    return make


@pytest.fixture
def enroll() -> Callable[[Experiment], Client]:
    def enroll_one(experiment: Experiment) -> Client:
        client, _ = services.client_register(experiment=experiment)
        return client

    return enroll_one


@pytest.fixture
def submit() -> Callable[..., object]:
    """Submit an update whose every value is ``value`` from ``client``, with metrics."""

    def submit_one(experiment: Experiment, client: Client, value: float, **options: object) -> object:
        payload = to_bytes({name: np.full(a.shape, value, dtype=a.dtype) for name, a in INITIAL.items()})
        update, _ = ingestion.update_submit(
            experiment=experiment, client=client, stream=io.BytesIO(payload), **options
        )
        return update

    return submit_one


@pytest.fixture
def run_round() -> Callable[[Experiment], ModelAggregate]:
    def run(experiment: Experiment) -> ModelAggregate:
        outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
        assert outcome.status == "committed", outcome
        return ModelAggregate.objects.get(pk=int(outcome.aggregate.aggregate_id))

    return run
