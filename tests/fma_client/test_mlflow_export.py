"""``fma export --mlflow``: rounds of a live FMA service logged to a real MLflow tracking server.

MLflow lives in its own environment (.venv-mlflow, built by the Makefile from
clients/python_client/requirements-mlflow.txt: the server, and fma-client with its mlflow extra), so
the export runs as that environment's ``fma`` and is read back through MLflow's REST API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from fma_client import Client, Developer
from fma_client.cli import main

VENV = Path(__file__).parents[2] / ".venv-mlflow" / "bin"
STARTUP_SECONDS = 300  # the server migrates its SQLite store first (about a minute on a busy machine)
WEIGHTS = {"dense": np.ones((4, 3), np.float32), "bias": np.ones(3, np.float32)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory) -> Iterator[str]:
    """A tracking server on loopback with a SQLite store in a temporary folder, answering /health."""
    if not (VENV / "mlflow").exists():
        message = f"{VENV / 'mlflow'} is missing (make test builds it: make .venv-mlflow/.installed)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    home = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [str(VENV / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--default-artifact-root", str(home / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=home, start_new_session=True,
        # no background job runner (a dozen huey workers): the export needs only the tracking API
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _healthy(url):
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health in time"
            time.sleep(0.2)  # between two looks at the condition
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
        server.wait(timeout=60)
        log.close()


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:  # not listening yet, or busy starting
        return False


def export(server: str, token: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMA_", "MLFLOW_", "PYTHONPATH"))}
    return subprocess.Popen(
        [str(VENV / "fma"), "--url", server, "--token", token, "--json", "export", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, "FMA_CONFIG": os.devnull},
    )  # fmt: skip


def exported(process: subprocess.Popen) -> list[dict]:
    try:
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()  # only if it is still running: a follow that missed its round
    assert process.returncode == 0, err
    lines = out.splitlines()
    return [json.loads(line) for line in lines] if "--follow" in process.args else [json.loads(out)]


def mlflow_api(url: str, method: str, path: str, **kwargs) -> dict:
    response = requests.request(method, f"{url}/api/2.0/mlflow/{path}", timeout=10, **kwargs)
    assert response.ok, response.text
    return response.json()


def the_run(url: str, name: str) -> dict:
    experiment = mlflow_api(url, "GET", "experiments/get-by-name", params={"experiment_name": name})
    runs = mlflow_api(
        url, "POST", "runs/search", json={"experiment_ids": [experiment["experiment"]["experiment_id"]]}
    )
    (run,) = runs["runs"]
    return run


def history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    found = mlflow_api(url, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": key})
    return [(m["step"], m["value"]) for m in found.get("metrics", [])]


def a_round(server, experiment, token, run_round, loss: float, accuracy: float) -> int:
    with Client.enroll(server, experiment.pk, enrollment_token=token, quiet=True) as client:
        client.push(WEIGHTS, num_examples=2, metrics={"loss": loss})
        aggregate = run_round(experiment.pk)
        client.report_scores(aggregate, {"accuracy": accuracy})
    return aggregate


def test_rounds_metrics_parameters_and_hashes_land_in_mlflow_once(
    mlflow_url, server, dev_token, experiment, enrollment_token, run_round
):
    first = a_round(server, experiment, enrollment_token, run_round, loss=0.5, accuracy=0.25)
    second = a_round(server, experiment, enrollment_token, run_round, loss=0.25, accuracy=0.75)
    with Developer(server, token=dev_token, quiet=True) as dev:
        dev.publish(second, "2.0.0")
        aggregates = {a["id"]: a for a in dev.aggregates(experiment.pk)}

    (answer,) = exported(export(server, dev_token, "--mlflow", mlflow_url, str(experiment.pk)))
    assert answer["rounds"] == [1, 2]
    run = the_run(mlflow_url, "fma/mnist")
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["aggregator"] == "fedavg"
    assert params["update_kind"] == "weights"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["fma.experiment"] == str(experiment.pk)
    assert tags["fma.last_round"] == "2"
    for number, aggregate, version in ((1, first, None), (2, second, "2.0.0")):
        record = json.loads(tags[f"fma.round.{number}"])
        assert record == {
            "aggregate": aggregate,
            "sha256": aggregates[aggregate]["content_id"],
            "aggregator": "fedavg",
            "aggregator_params": aggregates[aggregate]["aggregator_params"],  # as the round resolved them
            "version": version,
        }
    assert history(mlflow_url, run_id, "training.loss") == [(1, 0.5), (2, 0.25)]
    assert history(mlflow_url, run_id, "evaluation.accuracy") == [(1, 0.25), (2, 0.75)]

    (again,) = exported(export(server, dev_token, "--mlflow", mlflow_url, str(experiment.pk)))
    assert again["rounds"] == []
    assert history(mlflow_url, run_id, "training.loss") == [(1, 0.5), (2, 0.25)]
    assert history(mlflow_url, run_id, "evaluation.accuracy") == [(1, 0.25), (2, 0.75)]  # nothing resent

    # an evaluation of round 1 that came after round 2 was exported: its new combined figure is sent
    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as late:
        late.report_scores(first, {"accuracy": 0.75})
    (later,) = exported(export(server, dev_token, "--mlflow", mlflow_url, str(experiment.pk)))
    assert later["rounds"] == []
    assert history(mlflow_url, run_id, "evaluation.accuracy") == [(1, 0.25), (2, 0.75), (1, 0.5)]
    assert history(mlflow_url, run_id, "training.loss") == [(1, 0.5), (2, 0.25)]
    (settled,) = exported(export(server, dev_token, "--mlflow", mlflow_url, str(experiment.pk)))
    assert settled["rounds"] == []
    assert len(history(mlflow_url, run_id, "evaluation.accuracy")) == 3

    follower = export(
        server,
        dev_token,
        "--mlflow",
        mlflow_url,
        str(experiment.pk),
        "--follow",
        "--interval",
        "0.2",
        "--count",
        "1",
    )
    first_sync = json.loads(follower.stdout.readline())  # it has caught up: now a round lands
    assert first_sync["rounds"] == []
    a_round(server, experiment, enrollment_token, run_round, loss=0.125, accuracy=0.875)
    assert exported(follower) == [{"run_id": run_id, "rounds": [3]}]
    assert history(mlflow_url, run_id, "training.loss") == [(1, 0.5), (2, 0.25), (3, 0.125)]
    assert history(mlflow_url, run_id, "evaluation.accuracy")[-1] == (3, 0.875)


def test_without_the_extra_export_says_how_to_install_it(server, dev_token, experiment, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as in an install without the extra
    monkeypatch.setenv("FMA_CONFIG", os.devnull)
    status = main(
        [
            "--url",
            server,
            "--token",
            dev_token,
            "export",
            "--mlflow",
            "http://127.0.0.1:1",
            str(experiment.pk),
        ]
    )
    assert status == 1
    assert 'pip install "fma-client[mlflow]"' in capsys.readouterr().err
