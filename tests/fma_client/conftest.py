"""A live FMA service over real HTTP (pytest-django's ``live_server``), and rounds run in the test.

The client only ever talks HTTP to it; the fixtures use the server's own code just to set the
scene (a developer and her token, an experiment) and to run a round, which the background
runners would do in a deployment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.core.signals import request_started

from fma_client.cli import main
from fma_core.rounds import RoundEngine
from fma_django import developer_tokens, services
from fma_django.models import Experiment
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

INITIAL = {"dense": np.zeros((4, 3), dtype=np.float32), "bias": np.zeros(3, dtype=np.float32)}


@pytest.fixture
def server(live_server, transactional_db, settings, tmp_path: Path) -> str:
    """The live service's base URL, with weights kept in this test's own directory."""
    settings.FMA_WEIGHTS_DIR = tmp_path / "weights"
    return live_server.url


@pytest.fixture
def developer(server: str) -> User:
    return User.objects.create_user("dev", password="dev-password")


@pytest.fixture
def dev_token(developer: User) -> str:
    return developer_tokens.developer_token_create(user=developer)[1]


@pytest.fixture
def experiment(developer: User) -> Experiment:
    return services.experiment_create(developer=developer, name="mnist", initial_model=dict(INITIAL))


@pytest.fixture
def enrollment_token(experiment: Experiment) -> str:
    return services.enrollment_token_issue(experiment=experiment, user=experiment.developer)[1]


@pytest.fixture
def run_round() -> Callable[[int], int]:
    """Run the experiment's round now; returns the new aggregate's id."""

    def run(experiment_id: int) -> int:
        outcome = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment_id))
        assert outcome.status == "committed", outcome
        return int(outcome.aggregate.aggregate_id)

    return run


@pytest.fixture
def fma(monkeypatch, tmp_path, capsys):
    """Run ``fma ARGS…`` in this process with its own config file; returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("FMA_CONFIG", str(tmp_path / "config" / "fma.json"))
    for name in ("FMA_URL", "FMA_TOKEN", "FMA_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def upload_sessions_only(monkeypatch):
    """Every push through an upload session, however small: for the tests of that path (a small
    update otherwise goes in one request, ``fma_client.single``)."""
    from fma_client import Client

    monkeypatch.setattr(Client, "single_request_bytes", 0)


@pytest.fixture
def requests_seen() -> Iterator[list[tuple[str, str]]]:
    """(method, path) of every request the live server was sent."""
    seen: list[tuple[str, str]] = []

    def record(environ, **kwargs) -> None:
        seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))

    request_started.connect(record)
    yield seen
    request_started.disconnect(record)
