"""``fma experiments create`` takes an experiment's norm bound from its file, and shows the server's refusal."""

from __future__ import annotations

import json

import numpy as np

from fma_client.cli import main
from fma_client.weights import write_file
from fma_django.models import Experiment


def test_a_file_sets_the_bound_and_a_bad_one_is_refused(monkeypatch, capsys, server, dev_token, tmp_path):
    monkeypatch.setenv("FMA_CONFIG", str(tmp_path / "fma.json"))
    write_file({"w": np.zeros((2, 3), np.float32)}, tmp_path / "model.safetensors")
    (tmp_path / "experiment.yaml").write_text(
        "name: clipped\ninitial_model: model.safetensors\n"
        "update_norm: {mode: clip, adaptive: {multiplier: 3, window: 4}}\n"
    )
    login = ["--url", server, "--token", dev_token]
    assert main([*login, "--json", "experiments", "create", str(tmp_path / "experiment.yaml")]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["update_norm"] == {"mode": "clip", "adaptive": {"multiplier": 3, "window": 4}}
    (tmp_path / "bad.yaml").write_text(
        "name: bad\ninitial_model: model.safetensors\nupdate_norm: {mode: clip, bound: -1}\n"
    )
    assert main([*login, "experiments", "create", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err
    assert "HTTP 400" in err
    assert "update_norm.bound must be a finite number above 0" in err
    assert list(Experiment.objects.values_list("name", flat=True)) == ["clipped"]
