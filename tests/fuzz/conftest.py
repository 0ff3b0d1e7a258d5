"""A live FMA service (pytest-django's ``live_server``: a real HTTP server in a thread) and, for each
operation fuzzed, a fresh scene in it: an experiment with an aggregate, a published artifact, a
score, an open upload session and an enrollment token, and a client enrolled in it.

The callers authenticate as users do: the developer's token comes from ``/api-token-auth/``,
the client's credential from ``register_client/``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from django.contrib.auth.models import User
from django.core.cache import caches

from fma_core.rounds import RoundEngine
from fma_core.weights import to_bytes
from fma_django import services
from fma_django.models import Experiment
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

PASSWORD = "fuzz-password-7f3a"
TIMEOUT = 60


def weights(value: float) -> dict[str, np.ndarray]:
    return {"dense": np.full((4, 3), value, np.float32), "bias": np.full(3, value, np.float32)}


@dataclass
class Scene:
    """What the fuzzer's path parameters may name: real rows of the caller's own experiment."""

    experiment: int
    update: int
    aggregate: int
    artifact: int
    score: int
    upload: str
    enrollment_token: int
    client_credential: str

    def path_parameters(self, path: str) -> dict[str, object]:
        """Real values for the path parameters of ``path`` (a template of the schema)."""
        ids = {
            "/api/v1/models/": self.experiment,
            "/api/v1/model_updates/": self.update,
            "/api/v1/model_aggregates/": self.aggregate,
            "/api/v1/model_artifacts/": self.artifact,
            "/api/v1/client_aggregate_scores/": self.score,
        }
        values: dict[str, object] = {
            "experiment_pk": self.experiment,
            "upload_id": self.upload,
            "token_id": self.enrollment_token,
            "number": 1,
        }
        for prefix, pk in ids.items():
            if path.startswith(prefix + "{id}"):
                values["id"] = pk
        return values


@pytest.fixture
def server(live_server, transactional_db, settings, tmp_path: Path) -> str:
    """The live service's base URL, weights in this test's directory, no round run behind its back."""
    settings.FMA_WEIGHTS_DIR = tmp_path / "weights"
    settings.FMA_AGGREGATOR_RUNNER = "none"
    return live_server.url


@pytest.fixture
def developer(server: str) -> User:
    return User.objects.create_user("fuzz-dev", password=PASSWORD)


@pytest.fixture
def developer_token(server: str, developer: User) -> str:
    answer = requests.post(
        server + "/api-token-auth/",
        json={"username": developer.username, "password": PASSWORD},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


def forget_throttles() -> None:
    """Every cache emptied: each operation starts with the throttles' counts at zero."""
    for cache in caches.all(initialized_only=True):
        cache.clear()


@pytest.fixture
def make_scene(server: str, developer: User) -> Callable[[], Scene]:
    """A new experiment of the developer with every kind of row, and a new client enrolled in it."""

    numbers = itertools.count(1)

    def scene() -> Scene:
        forget_throttles()
        experiment: Experiment = services.experiment_create(  # names are unique per developer
            developer=developer, name=f"fuzzed {next(numbers)}", initial_model=weights(0.0)
        )
        base = f"{server}/api/v1/models/{experiment.pk}/"
        token_row, token = services.enrollment_token_issue(experiment=experiment, user=developer)
        enrolled = requests.post(base + "register_client/", json={"enrollment_token": token}, timeout=TIMEOUT)
        assert enrolled.status_code == 200, enrolled.text
        credential = enrolled.json()["credential"]
        client = requests.Session()
        client.headers["Authorization"] = f"Client {credential}"
        body = to_bytes(weights(1.0))
        pushed = client.post(
            base + "upload_update/",
            data=body,
            headers={"Content-Type": "application/octet-stream"},
            timeout=TIMEOUT,
        )
        assert pushed.status_code == 201, pushed.text
        outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
        assert outcome.status == "committed", outcome
        aggregate = int(outcome.aggregate.aggregate_id)
        scored = client.post(
            f"{server}/api/v1/client_aggregate_scores/",
            json={"aggregate": aggregate, "validation_results": {"accuracy": 0.5}},
            timeout=TIMEOUT,
        )
        assert scored.status_code == 201, scored.text
        artifact = services.aggregate_publish(
            aggregate=experiment.aggregates.get(pk=aggregate), version="2.0.0", user=developer
        )
        started = client.post(
            base + "uploads/",
            json={"size": len(body), "sha256": hashlib.sha256(body).hexdigest()},
            timeout=TIMEOUT,
        )
        assert started.status_code == 201, started.text
        return Scene(
            experiment=experiment.pk,
            update=pushed.json()["id"],
            aggregate=aggregate,
            artifact=artifact.pk,
            score=scored.json()["id"],
            upload=started.json()["id"],
            enrollment_token=token_row.pk,
            client_credential=credential,
        )

    return scene
