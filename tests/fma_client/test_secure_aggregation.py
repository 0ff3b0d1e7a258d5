"""Secure aggregation end to end: fma-client's ``push`` runs the SecAgg+ stages against a live service.

Clients push from threads at once (each push waits for the others through the stages); the
aggregate is the weighted mean within the quantization step, no update in the clear ever reaches
the weight store or the database, dropouts are survived, and below the threshold the round fails
saying why.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from django.core import serializers as django_serializers

from fma_client import Client, SecurePush, SecureRoundFailed
from fma_core.weights import load
from fma_django import secure_rounds, services
from fma_django.models import Event, ModelAggregate, ModelUpdate, SecureRoundRow
from fma_django.storage import weight_store

from .conftest import INITIAL

CLIP = 4.0
BITS = 24


@pytest.fixture
def secure(developer):
    return services.experiment_create(
        developer=developer,
        name="secure",
        initial_model=dict(INITIAL),
        secure_aggregation={"clip": CLIP, "bits": BITS, "rounding": "nearest", "stage_seconds": 30},
    )


def stored_files() -> list[Path]:
    return [p for p in Path(weight_store().root).rglob("*") if p.is_file()]


def assert_no_plaintext(paths, updates):
    """No 8 consecutive bytes of any update's values (as pushed, float32) in any stored object."""
    chunks = [u[name].tobytes()[i : i + 8] for u in updates for name in u for i in range(0, 16, 8)]
    for path in paths:
        data = path.read_bytes()
        assert not any(chunk in data for chunk in chunks), path


def clients_of(server, experiment, n):
    token = services.enrollment_token_issue(experiment=experiment, user=experiment.developer)[1]
    return [Client.enroll(server, experiment.pk, enrollment_token=token, quiet=True) for _ in range(n)]


def push_all(clients, updates, weights):
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            outcomes[i] = clients[i].push(updates[i], num_examples=weights[i])
        except Exception as error:  # handed to the test
            outcomes[i] = error

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return outcomes


def test_push_runs_the_stages_and_the_aggregate_is_the_weighted_mean(server, secure, tmp_path, inprocess):
    rng = np.random.default_rng(4)
    clients = clients_of(server, secure, 4)
    updates = [
        {name: rng.normal(0, 1, value.shape).astype(np.float32) for name, value in INITIAL.items()}
        for _ in clients
    ]
    weights = [3, 10, 7, 1]
    for c in clients:
        c.pull()
    outcomes = push_all(clients, updates, weights)
    assert all(isinstance(o, SecurePush) for o in outcomes.values()), outcomes
    aggregate = ModelAggregate.objects.get(experiment=secure)
    assert {o.aggregate for o in outcomes.values()} == {aggregate.pk}
    assert aggregate.report["secure_aggregation"]["stages"] == {
        "advertise": 4,
        "share_keys": 4,
        "masked_input": 4,
        "unmasking": 4,
    }
    with weight_store().open(aggregate.weights_key) as stream:
        result = load(stream.read())
    step = 2 * CLIP / (2**BITS - 1)
    for name in INITIAL:
        expected = sum(w * u[name].astype(np.float64) for w, u in zip(weights, updates, strict=True)) / sum(
            weights
        )
        assert np.max(np.abs(result[name] - expected)) <= step / 2 + 1e-6
    assert not ModelUpdate.objects.exists()
    # no update in the clear anywhere: not in the weight store (the masked inputs are gone too), not in the database
    stored = stored_files()
    assert_no_plaintext(stored, updates)
    assert not [p for p in stored if "/secure/" in str(p)]
    dump = django_serializers.serialize("json", [*SecureRoundRow.objects.all(), *Event.objects.all()])
    for u in updates:
        for value in u["bias"][:2]:
            assert json.dumps(float(value)) not in dump
    # each client's first push went the plain way and was refused before a byte was stored
    assert not [p for p in stored if "/updates/" in str(p)]


ANSWERED = {"advertise": "keys", "share_keys": "outbox", "masked_input": "inputs", "unmasking": "revealed"}


@pytest.mark.parametrize("stage", list(ANSWERED))
def test_a_client_that_drops_at_any_stage_is_survived(server, secure, monkeypatch, stage, inprocess):
    """The fifth client vanishes at ``stage`` (its request never lands); the others' stage waits for its
    deadline, which the sweep then finds passed, and the round completes without it."""
    clients = clients_of(server, secure, 5)
    updates = [
        {name: np.full(value.shape, i + 0.25, np.float32) for name, value in INITIAL.items()}
        for i in range(5)
    ]
    gone = clients[4].uuid
    real_submit, real_input = secure_rounds.secure_round_submit, secure_rounds.secure_round_masked_input

    def submit(*, client, stage: str, **kwargs):
        if str(client.uuid) == gone and stage == dropped_at:
            raise ConnectionAbortedError("the client vanished")
        return real_submit(client=client, stage=stage, **kwargs)

    def masked_input(*, client, **kwargs):
        if str(client.uuid) == gone and dropped_at == "masked_input":
            raise ConnectionAbortedError("the client vanished")
        return real_input(client=client, **kwargs)

    dropped_at = stage
    monkeypatch.setattr(secure_rounds, "secure_round_submit", submit)
    monkeypatch.setattr(secure_rounds, "secure_round_masked_input", masked_input)
    outcomes = {}

    def run(i):
        try:
            outcomes[i] = clients[i].push(updates[i], num_examples=1)
        except Exception as error:
            outcomes[i] = error

    pushing = range(4) if stage == "advertise" else range(5)  # at advertise: it never pushes at all
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in pushing]
    for t in threads:
        t.start()
    passed = False
    for _ in range(1200):  # the other four answer the stage; then its deadline passes
        row = SecureRoundRow.objects.filter(experiment=secure).first()
        if row is not None and row.stage == stage and len(row.state[ANSWERED[stage]]) == 4:
            if stage == "masked_input":
                inputs = [p for p in stored_files() if "/secure/" in str(p)]
                assert len(inputs) == 4
                assert_no_plaintext(inputs, updates)  # the masked inputs, while the round waits
            secure_rounds.secure_rounds_advance(now=row.state["deadline"] + 1)
            passed = True
            break
        threading.Event().wait(0.05)
    for t in threads:
        t.join(timeout=120)
    assert passed
    assert all(isinstance(outcomes[i], SecurePush) for i in range(4)), outcomes
    aggregate = ModelAggregate.objects.get(experiment=secure)
    with weight_store().open(aggregate.weights_key) as stream:
        result = load(stream.read())
    # its input counts when it sent it (dropped at unmasking: its self mask is rebuilt from shares)
    counted = 5 if stage == "unmasking" else 4
    expected = np.mean(np.clip(np.arange(counted) + 0.25, -CLIP, CLIP))  # 4.25 is clipped to the field's ±4
    np.testing.assert_allclose(result["bias"], np.full(3, expected), atol=1e-5)
    stages = aggregate.report["secure_aggregation"]["stages"]
    assert stages[stage] == 4
    assert not [p for p in stored_files() if "/secure/" in str(p)]  # masked inputs removed with the round


def test_below_the_threshold_the_round_fails_and_says_why(server, secure):
    clients = clients_of(server, secure, 3)
    row = None
    outcomes = {}

    def run(i):
        try:
            outcomes[i] = clients[i].push(dict(INITIAL), num_examples=1)
        except Exception as error:
            outcomes[i] = error

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    for _ in range(400):
        row = SecureRoundRow.objects.filter(experiment=secure).first()
        if row is not None and len(row.state["keys"]) == 2:
            secure_rounds.secure_rounds_advance(now=row.state["deadline"] + 1)
            break
        threading.Event().wait(0.05)
    for t in threads:
        t.join(timeout=120)
    assert all(isinstance(o, SecureRoundFailed) for o in outcomes.values()), outcomes
    assert "2 clients advertised keys, at least 3 needed" in str(outcomes[0])
    row.refresh_from_db()
    assert row.stage == "failed"
    assert not ModelAggregate.objects.exists()


def test_creation_refuses_what_secure_aggregation_cannot_honour(developer):
    from fma_django.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="aggregator: 'median'") as refused:
        services.experiment_create(
            developer=developer,
            name="x",
            initial_model=dict(INITIAL),
            aggregator="median",
            secure_aggregation={},
        )
    assert refused.value.code == "invalid_secure_aggregation"
    with pytest.raises(ValidationFailed, match="update_norm"):
        services.experiment_create(
            developer=developer,
            name="y",
            initial_model=dict(INITIAL),
            update_norm={"mode": "clip", "bound": 1.0},
            secure_aggregation={},
        )
    with pytest.raises(ValidationFailed, match="threshold"):
        services.experiment_create(
            developer=developer, name="z", initial_model=dict(INITIAL), secure_aggregation={"threshold": 0.2}
        )


def test_the_cli_shows_the_mode_and_each_rounds_stage_counts(fma, server, dev_token, tmp_path, inprocess):
    from fma_client import write_file

    write_file(dict(INITIAL), tmp_path / "model.safetensors")
    login = ("--url", server, "--token", dev_token)
    (tmp_path / "refused.yaml").write_text(
        "name: cli-secure\naggregator: median\nsecure_aggregation: {}\ninitial_model: model.safetensors\n"
    )
    status, _, err = fma(*login, "experiments", "create", tmp_path / "refused.yaml")
    assert status != 0
    assert "secure_aggregation cannot be combined with: aggregator: 'median'" in err
    (tmp_path / "experiment.yaml").write_text(
        "name: cli-secure\nsecure_aggregation: {stage_seconds: 30}\ninitial_model: model.safetensors\n"
        "enrollment: open\n"
    )
    status, out, err = fma(*login, "--json", "experiments", "create", tmp_path / "experiment.yaml")
    assert status == 0, err
    experiment = json.loads(out)["id"]
    status, out, _ = fma(*login, "experiments", "show", experiment)
    assert "secure_aggregation" in out
    assert "stage_seconds" in out
    clients = [Client.enroll(server, experiment, quiet=True) for _ in range(3)]
    outcomes = push_all(clients, [dict(INITIAL)] * 3, [1, 2, 3])
    aggregate = outcomes[0].aggregate
    status, out, _ = fma(*login, "aggregate", aggregate)
    assert status == 0
    assert "secure_aggregation" in out
    assert "'masked_input': 3" in out or '"masked_input": 3' in out
