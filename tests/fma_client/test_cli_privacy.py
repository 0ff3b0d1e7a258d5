"""``fma experiments create`` takes an experiment's differential privacy from its file, ``fma experiments
show`` its ledger, and the server's refusal of a bad setting is shown as it is."""

from __future__ import annotations

import json

import numpy as np

from fma_client.cli import main
from fma_client.weights import write_file
from fma_django.models import Experiment

PRIVACY = (
    "privacy: {clip: {bound: 1.0}, noise_multiplier: 1.1, expected_clients: 10, epsilon: 8, delta: 1.0e-5}\n"
)


def test_a_file_sets_privacy_and_show_gives_the_ledger(monkeypatch, capsys, server, dev_token, tmp_path):
    monkeypatch.setenv("FMA_CONFIG", str(tmp_path / "fma.json"))
    write_file({"w": np.zeros((2, 3), np.float32)}, tmp_path / "model.safetensors")
    (tmp_path / "experiment.yaml").write_text("name: private\ninitial_model: model.safetensors\n" + PRIVACY)
    login = ["--url", server, "--token", dev_token]
    assert main([*login, "--json", "experiments", "create", str(tmp_path / "experiment.yaml")]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["privacy"]["noise_multiplier"] == 1.1
    assert main([*login, "experiments", "show", str(created["id"])]) == 0
    shown = capsys.readouterr().out
    assert "privacy_spent" in shown
    assert (
        'privacy_spent              {"epsilon": 0.0, "delta": 1e-05, "budget_epsilon": 8.0, '
        '"charged_rounds": 0, "clip_bound": 1.0, "budget_spent": false}'
    ) in shown
    (tmp_path / "bad.yaml").write_text(
        "name: bad\ninitial_model: model.safetensors\naggregator: median\n" + PRIVACY
    )
    assert main([*login, "experiments", "create", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err
    assert "HTTP 400" in err
    assert "aggregator 'median' is not usable with differential privacy" in err
    assert list(Experiment.objects.values_list("name", flat=True)) == ["private"]
