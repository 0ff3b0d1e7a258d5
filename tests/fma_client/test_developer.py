"""``fma_client.Developer`` against a live service: definitions, listing, tokens, rounds, downloads, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fma_client import (
    AuthenticationError,
    Client,
    Developer,
    NotFound,
    PermissionDenied,
    ValidationError,
    read_file,
    write_file,
)
from fma_django.models import Experiment

SPEC = [{"name": "w", "dtype": "F32", "shape": [2]}]


@pytest.fixture
def dev(server, developer, dev_token):
    with Developer(server, token=dev_token, quiet=True) as session:
        yield session


def test_login_exchanges_a_password_for_a_new_token(server, developer, dev_token):
    with Developer.login(server, "dev", "dev-password") as session:
        assert session.token != dev_token
        assert session.experiments() == []
    with pytest.raises(ValidationError, match="check the username and password"):
        Developer.login(server, "dev", "wrong")


def test_an_open_experiment_from_a_dict_runs_and_its_results_can_be_listed_and_downloaded(
    dev, run_round, tmp_path
):
    created = dev.create_experiment(
        {"name": "open-one", "aggregator": "mean", "tensor_spec": SPEC, "enrollment": "open"}
    )
    assert (created["open_enrollment"], created["legacy_mode"]) == (True, False)
    assert [e["name"] for e in dev.experiments(name="open")] == ["open-one"]
    assert dev.experiments(name="nothing-like-it") == []

    with Client.enroll(dev.url, created["id"], quiet=True) as client:  # no token needed
        client.push({"w": np.array([1.0, 3.0], np.float32)}, num_examples=2, metrics={"loss": 1.0})
        assert [u["metrics"] for u in dev.updates(created["id"], status="pending")] == [{"loss": 1.0}]
        aggregate = run_round(created["id"])
        assert [a["id"] for a in dev.aggregates(created["id"])] == [aggregate]
        path = dev.download(created["id"], tmp_path / "a.safetensors", aggregate=aggregate)
        np.testing.assert_array_equal(read_file(path)["w"], [1.0, 3.0])
        dev.publish(aggregate, "2.0")
        assert [a["version"] for a in dev.artifacts(created["id"])] == ["2.0"]
        with pytest.raises(NotFound, match=r"no published version '9\.9'"):
            dev.download(created["id"], tmp_path / "b.safetensors", version="9.9")

        paused = dev.update_experiment(created["id"], allow_aggregation=False)
        assert paused["allow_aggregation"] is False
        dev.revoke(created["id"], client.uuid)
        assert dev.experiment(created["id"])["clients"] == []


def test_a_json_file_with_an_initial_model_next_to_it(dev, tmp_path):
    write_file(
        {"b": np.ones(2, np.float16), "a": np.arange(3, dtype=np.int32)}, tmp_path / "init.safetensors"
    )
    (tmp_path / "exp.json").write_text(json.dumps({"name": "from-json", "initial_model": "init.safetensors"}))
    created = dev.create_experiment(tmp_path / "exp.json")
    assert created["tensor_spec"] == [
        {"name": "b", "dtype": "F16", "shape": [2]},
        {"name": "a", "dtype": "I32", "shape": [3]},
    ]
    assert created["current_artifact"] is not None
    path = dev.download(created["id"], tmp_path / "initial.safetensors")
    weights = read_file(path)
    assert list(weights) == ["b", "a"]
    assert weights["a"].dtype == np.int32


def test_definitions_are_checked_before_anything_is_sent(dev, tmp_path):
    with pytest.raises(ValidationError, match="enrollment must be one of token, open, legacy"):
        dev.create_experiment({"name": "x", "enrollment": "anyone"})
    with pytest.raises(ValidationError, match="initial_model: no file"):
        dev.create_experiment({"name": "x", "initial_model": str(tmp_path / "missing.safetensors")})
    (tmp_path / "list.yaml").write_text("- name: x\n")
    with pytest.raises(ValidationError, match="must hold a mapping"):
        dev.create_experiment(tmp_path / "list.yaml")
    assert not Experiment.objects.exists()


def test_enrollment_tokens_honour_their_limits(dev, experiment):
    token = dev.issue_enrollment_token(experiment.pk, max_uses=1, expires_in=3600)["token"]
    Client.enroll(dev.url, experiment.pk, enrollment_token=token, quiet=True).close()
    with pytest.raises(PermissionDenied, match="used up"):
        Client.enroll(dev.url, experiment.pk, enrollment_token=token, quiet=True)


def test_a_leaked_enrollment_token_is_listed_and_revoked(dev, experiment):
    leaked = dev.issue_enrollment_token(experiment.pk)
    kept = dev.issue_enrollment_token(experiment.pk, max_uses=5)
    Client.enroll(dev.url, experiment.pk, enrollment_token=leaked["token"], quiet=True).close()

    listed = dev.enrollment_tokens(experiment.pk)
    assert [t["id"] for t in listed] == [kept["id"], leaked["id"]]  # newest first
    assert all("token" not in t for t in listed)  # the secrets are never shown again
    assert [(t["uses"], t["active"]) for t in listed] == [(0, True), (1, True)]

    revoked = dev.revoke_enrollment_token(experiment.pk, leaked["id"])
    assert revoked["revoked_at"] is not None
    assert revoked["active"] is False
    assert dev.revoke_enrollment_token(experiment.pk, leaked["id"])["revoked_at"] == revoked["revoked_at"]
    with pytest.raises(PermissionDenied, match="revoked"):
        Client.enroll(dev.url, experiment.pk, enrollment_token=leaked["token"], quiet=True)
    Client.enroll(dev.url, experiment.pk, enrollment_token=kept["token"], quiet=True).close()
    assert experiment.events.filter(kind="enrollment_token_revoked").count() == 1


def test_another_developers_tokens_are_not_found(dev, experiment, server):
    from django.contrib.auth.models import User

    from fma_django import developer_tokens

    issued = dev.issue_enrollment_token(experiment.pk)
    other = User.objects.create_user("mallory", password="x")
    with Developer(
        server, token=developer_tokens.developer_token_create(user=other)[1], quiet=True
    ) as mallory:
        with pytest.raises(NotFound):
            mallory.enrollment_tokens(experiment.pk)
        with pytest.raises(NotFound):
            mallory.revoke_enrollment_token(experiment.pk, issued["id"])
    with pytest.raises(NotFound, match="no enrollment token"):
        dev.revoke_enrollment_token(experiment.pk, issued["id"] + 100)


def test_a_bad_token_is_an_authentication_error(server, experiment):
    with Developer(server, token="not-a-token", quiet=True) as stranger, pytest.raises(AuthenticationError):
        stranger.experiments()
