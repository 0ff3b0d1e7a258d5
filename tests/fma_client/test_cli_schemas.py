"""``fma experiments create`` goes through the service's rules: a schema that would fetch is refused."""

from __future__ import annotations

import json

from fma_client.cli import main
from fma_django.models import Experiment


def test_the_cli_reports_a_refused_remote_ref(monkeypatch, capsys, server, dev_token, tmp_path):
    monkeypatch.setenv("FMA_CONFIG", str(tmp_path / "fma.json"))
    config = tmp_path / "experiment.json"
    config.write_text(json.dumps({"name": "x", "metrics_schema": {"$ref": "file:///etc/passwd"}}))
    status = main(["--url", server, "--token", dev_token, "experiments", "create", str(config)])
    err = capsys.readouterr().err
    assert status == 1
    assert "HTTP 400" in err
    assert "file:///etc/passwd" in err
    assert "root:" not in err
    assert not Experiment.objects.exists()
