"""Shared fixtures: developers, experiments with a small initial model, enrolled clients, API callers."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from fma_core.weights import to_bytes
from fma_django import developer_tokens, services
from fma_django.models import Experiment

SHAPES = {"dense": (4, 3), "bias": (3,)}


def make_weights(value: float = 0.5, shapes: dict = SHAPES, dtype: str = "float32") -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, dtype=dtype) for name, shape in shapes.items()}


@pytest.fixture
def weights_dir(settings, tmp_path: Path) -> Path:
    """Each test writes weights to its own directory, so it can check that nothing was left behind."""
    settings.FMA_WEIGHTS_DIR = tmp_path / "weights"
    return settings.FMA_WEIGHTS_DIR


@pytest.fixture
def stored_files(weights_dir: Path) -> Callable[[], list[str]]:
    def files() -> list[str]:
        return sorted(
            str(p.relative_to(weights_dir))
            for p in weights_dir.rglob("*")
            if p.is_file() and ".tmp" not in p.parts
        )

    return files


@pytest.fixture
def weights() -> Callable[..., dict[str, np.ndarray]]:
    return make_weights


@pytest.fixture
def safetensors() -> Callable[..., bytes]:
    def build(value: float = 0.5, **kwargs: object) -> bytes:
        return to_bytes(make_weights(value, **kwargs))

    return build


@pytest.fixture
def developer(db) -> User:
    return User.objects.create_user("dev", password="dev-password")


@pytest.fixture
def other_developer(db) -> User:
    return User.objects.create_user("other", password="other-password")


def token_client(user: User) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {developer_tokens.developer_token_create(user=user)[1]}")
    return api


@pytest.fixture
def dev_api(developer: User) -> APIClient:
    return token_client(developer)


@pytest.fixture
def other_dev_api(other_developer: User) -> APIClient:
    return token_client(other_developer)


@pytest.fixture
def make_experiment(weights_dir: Path, developer: User) -> Callable[..., Experiment]:
    numbers = itertools.count(1)

    def create(owner: User | None = None, **config: object) -> Experiment:
        number = next(numbers)  # names are unique per developer
        config.setdefault("name", "mnist" if number == 1 else f"mnist {number}")
        config.setdefault("initial_model", make_weights(0.0))
        return services.experiment_create(developer=owner or developer, **config)

    return create


@pytest.fixture
def experiment(make_experiment: Callable[..., Experiment]) -> Experiment:
    return make_experiment()


@pytest.fixture
def enroll() -> Callable[[Experiment], APIClient]:
    """A new client enrolled through the API with an enrollment token; returns an API caller for it."""

    def enrolled(experiment: Experiment) -> APIClient:
        _, token = services.enrollment_token_issue(experiment=experiment, user=experiment.developer)
        response = APIClient().post(
            f"/api/v1/models/{experiment.pk}/register_client/", {"enrollment_token": token}, format="json"
        )
        assert response.status_code == 200, response.content
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Client {response.json()['credential']}")
        api.uuid = response.json()["uuid"]
        return api

    return enrolled


@pytest.fixture
def client_api(experiment: Experiment, enroll: Callable[[Experiment], APIClient]) -> APIClient:
    return enroll(experiment)


def upload(api: APIClient, experiment_id: int, body: bytes, **headers: str):
    """POST a safetensors body to upload_update/ with X-FMA-... headers given as keyword arguments."""
    meta = {"HTTP_" + name.upper(): value for name, value in headers.items()}
    return api.generic(
        "POST",
        f"/api/v1/models/{experiment_id}/upload_update/",
        body,
        content_type="application/octet-stream",
        **meta,
    )


@pytest.fixture
def uploader() -> Callable:
    return upload


@pytest.fixture
def api_for() -> Callable[[User], APIClient]:
    """An API caller authenticated with the user's DRF token."""
    return token_client
