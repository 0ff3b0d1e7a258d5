"""Local protection in fma-client: a push clips its change (and may noise it) before any byte leaves, and
declares it in the update's metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fma_client import Client, FmaClientError, LocalPrivacy
from fma_client.privacy import gaussian
from fma_core.weights import load
from fma_django import services
from fma_django.models import ModelUpdate
from fma_django.storage import weight_store


def stored(update) -> dict[str, np.ndarray]:
    with weight_store().open(ModelUpdate.objects.get(pk=update["id"]).weights_key) as stream:
        return load(stream)


@pytest.fixture
def open_experiment(developer):
    start = {"dense": np.full((4, 3), 1.0, np.float32), "bias": np.zeros(3, np.float32)}
    return services.experiment_create(
        developer=developer, name="local", initial_model=start, open_enrollment=True
    )


def test_a_push_sends_its_change_clipped_and_declares_it(server, open_experiment):
    with Client.enroll(
        server, open_experiment.pk, quiet=True, local_privacy=LocalPrivacy(clip=0.5)
    ) as client:
        base = client.pull().weights
        trained = {name: value + 2.0 for name, value in base.items()}  # a change of norm 2·√15
        update = client.push(trained, num_examples=5, metrics={"loss": 0.3})
    sent = stored(update)
    change = {name: sent[name].astype(np.float64) - base[name] for name in base}
    assert math.sqrt(sum(float(np.sum(v**2)) for v in change.values())) == pytest.approx(0.5, rel=1e-5)
    np.testing.assert_allclose(change["dense"], np.full((4, 3), 0.5 / math.sqrt(15)), rtol=1e-5)
    assert ModelUpdate.objects.get(pk=update["id"]).metrics == {
        "loss": 0.3,
        "dp_local_clip": 0.5,
        "dp_local_noise_stddev": 0.0,
    }


def test_local_noise_has_the_declared_scale_and_a_short_change_is_not_scaled(server, open_experiment):
    protection = LocalPrivacy(clip=100.0, noise_multiplier=0.01)  # σ = 1
    change = {"dense": np.zeros((300, 300), np.float32), "steps": np.array([3], np.int64)}
    protected = protection.protect(change)
    n = change["dense"].size
    assert abs(float(protected["dense"].mean())) < 6 / math.sqrt(n)  # six standard errors: not flaky
    assert abs(float(protected["dense"].var()) - 1) < 6 * math.sqrt(2 / n)
    assert protected["steps"].tolist() == [3]
    assert protection.declared() == {"dp_local_clip": 100.0, "dp_local_noise_stddev": 1.0}
    sample = gaussian(200_000)
    assert abs(float(np.mean(np.abs(sample) > 1.959964)) - 0.05) < 6 * math.sqrt(0.05 * 0.95 / 200_000)


def test_bad_protection_and_pushing_a_file_are_refused(server, open_experiment, tmp_path):
    with pytest.raises(FmaClientError, match="clip must be a finite number above 0"):
        LocalPrivacy(clip=0)
    with pytest.raises(FmaClientError, match="noise_multiplier must be a finite number"):
        LocalPrivacy(clip=1, noise_multiplier=-1)
    with Client.enroll(server, open_experiment.pk, quiet=True, local_privacy=LocalPrivacy(clip=1)) as client:
        with pytest.raises(FmaClientError, match="pull\\(\\) that model"):
            client.push({"dense": np.zeros((4, 3), np.float32), "bias": np.zeros(3, np.float32)}, 1)
        with pytest.raises(FmaClientError, match="with local_privacy, use push"):
            client.push_file(tmp_path / "x.safetensors", 1)
        client.pull()
        with pytest.raises(FmaClientError, match="declared by local_privacy"):
            client.push(client.pull().weights, 1, metrics={"dp_local_clip": 3})
