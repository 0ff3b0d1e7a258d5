"""The ``fma`` command end to end against a live service: login → create → enroll → round → publish → download."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fma_client import Client, NotFound, read_file, write_file
from fma_django.models import Experiment

MODEL = {"conv": np.zeros((2, 3), np.float32), "step": np.zeros(1, np.int64), "out": np.zeros(2, np.float64)}


def test_cli_drives_an_experiment_from_creation_to_a_published_model(
    fma, server, developer, run_round, tmp_path, monkeypatch
):
    monkeypatch.setattr(sys, "stdin", io.StringIO("dev-password\n"))
    status, out, _ = fma("login", "--url", server, "--username", "dev", "--password-stdin")
    assert status == 0, out
    config = tmp_path / "config" / "fma.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text())["url"] == server

    write_file(MODEL, tmp_path / "model.safetensors")
    (tmp_path / "experiment.yaml").write_text(
        "name: cli-demo\naggregator: fedavg\nround_policy: {policy: require_x_updates, x: 1}\n"
        "initial_model: model.safetensors\nenrollment: token\n"
    )
    status, out, _ = fma("--json", "experiments", "create", tmp_path / "experiment.yaml")
    assert status == 0
    created = json.loads(out)
    experiment = created["id"]
    assert [t["name"] for t in created["tensor_spec"]] == ["conv", "step", "out"]
    assert [t["dtype"] for t in created["tensor_spec"]] == ["F32", "I64", "F64"]
    assert not created["open_enrollment"]

    status, out, _ = fma("experiments", "list")
    header, row = out.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "AGGREGATOR"]
    assert row.split()[:3] == [str(experiment), "cli-demo", "fedavg"]
    status, out, _ = fma("experiments", "show", experiment)
    assert "round_policy" in out
    assert "require_x_updates" in out

    status, out, _ = fma("enroll-token", experiment, "--max-uses", "1", "--json")
    token = json.loads(out)["token"]
    status, out, _ = fma("enroll-token", experiment)
    spare = int(out.split("fma revoke-enroll-token")[1].split()[1])
    status, out, _ = fma("revoke-enroll-token", experiment, spare)
    assert (status, f"Enrollment token {spare} of experiment {experiment} enrolls nobody else") == (
        0,
        out.split(" (")[0],
    )
    status, out, _ = fma("enroll-tokens", experiment)
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["ID", "CREATED_ON", "CREATED_BY"]
    assert [row.split()[-1] for row in rows] == ["no", "yes"]  # the spare revoked, the first active

    with Client.enroll(server, experiment, enrollment_token=token, quiet=True) as client:
        weights, _ = client.pull()
        assert {n: a.dtype for n, a in weights.items()} == {n: a.dtype for n, a in MODEL.items()}
        client.push({n: a + 1 for n, a in weights.items()}, num_examples=5)
        aggregate = run_round(experiment)

        status, out, _ = fma("watch", experiment, "--after", 0, "--count", 1, "--interval", 0.1)
        assert status == 0
        assert f"round 1: aggregate {aggregate}" in out
        status, out, _ = fma("aggregates", experiment, "--json")
        assert [a["id"] for a in json.loads(out)] == [aggregate]

        status, out, _ = fma("publish", experiment, "1.1.0")
        assert (status, out.strip()) == (0, f"Published aggregate {aggregate} as version 1.1.0")
        status, out, _ = fma(
            "download", experiment, "--version", "1.1.0", "-o", tmp_path / "v1.1.safetensors"
        )
        assert status == 0
        assert "Saved" in out
        downloaded = read_file(tmp_path / "v1.1.safetensors")
        assert list(downloaded) == ["conv", "step", "out"]
        np.testing.assert_array_equal(downloaded["step"], np.ones(1, np.int64))
        status, _, _ = fma("download", experiment, "-o", tmp_path / "latest.safetensors", "-q")
        assert status == 0
        np.testing.assert_array_equal(read_file(tmp_path / "latest.safetensors")["conv"], np.ones((2, 3)))

        status, out, _ = fma("revoke", experiment, client.uuid)
        assert status == 0
        with pytest.raises(NotFound):
            client.pull()

    status, _, err = fma("publish", experiment, "1.1.0")
    assert status == 1
    assert "already published" in err


def test_watch_prints_a_round_as_it_completes(
    fma, server, developer, dev_token, experiment, enrollment_token, run_round
):
    printed = []

    def watch() -> None:
        printed.append(
            fma(
                "--url",
                server,
                "--token",
                dev_token,
                "watch",
                experiment.pk,
                "--count",
                1,
                "--interval",
                0.05,
            )
        )

    with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        client.pull()
        client.push({"dense": np.ones((4, 3), np.float32), "bias": np.ones(3, np.float32)}, num_examples=1)
    watcher = threading.Thread(target=watch)
    watcher.start()
    # Rounds keep completing until the watcher, which only reports rounds after it started, has seen one.
    while watcher.is_alive():
        with Client.enroll(server, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
            client.push(
                {"dense": np.ones((4, 3), np.float32), "bias": np.ones(3, np.float32)}, num_examples=1
            )
        run_round(experiment.pk)
        watcher.join(timeout=1)
    status, out, _ = printed[0]
    assert status == 0
    assert "round " in out
    assert "aggregate " in out


def test_cli_errors_are_short_and_say_what_to_do(fma, server, dev_token, tmp_path):
    status, _, err = fma("experiments", "list")
    assert (status, err.strip()) == (
        2,
        "fma: not logged in: run `fma login --url https://your-fma-service` first",
    )
    status, _, err = fma("--url", server, "--token", "wrong", "experiments", "list")
    assert status == 1
    assert "HTTP 401" in err
    assert "fma login" in err
    status, _, err = fma("--url", server, "--token", dev_token, "experiments", "show", 999)
    assert status == 1
    assert "HTTP 404" in err
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x", "aggregator": "nope"}))
    status, _, err = fma(
        "--url", server, "--token", dev_token, "experiments", "create", tmp_path / "bad.json"
    )
    assert status == 1
    assert "HTTP 400" in err
    assert "aggregator" in err
    assert not Experiment.objects.exists()


def test_login_with_a_token_checks_it_and_the_console_script_reads_the_saved_config(
    fma, server, dev_token, experiment, tmp_path
):
    status, _, err = fma("login", "--url", server, "--token", "wrong")
    assert status == 1
    assert "401" in err
    assert fma("login", "--url", server, "--token", dev_token)[0] == 0
    script = shutil.which("fma", path=str(Path(sys.executable).parent))
    listed = subprocess.run(
        [script, "experiments", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "FMA_CONFIG": str(tmp_path / "config" / "fma.json")},
        timeout=60,
    )
    assert [e["name"] for e in json.loads(listed.stdout)] == ["mnist"]


def test_a_server_optimizer_runs_from_the_cli_and_its_state_is_in_each_aggregates_lineage(
    fma, server, dev_token, run_round, tmp_path
):
    weights = {"w": np.zeros((2, 3), np.float32)}
    write_file(weights, tmp_path / "model.safetensors")
    (tmp_path / "experiment.yaml").write_text(
        "name: cli-fedadam\naggregator: fedadam\n"
        "aggregator_params: {server_learning_rate: 0.5, beta_1: 0.9, beta_2: 0.99, tau: 0.001}\n"
        "round_policy: {policy: require_x_updates, x: 1}\ninitial_model: model.safetensors\nenrollment: open\n"
    )
    login = ("--url", server, "--token", dev_token)
    status, out, err = fma(*login, "--json", "experiments", "create", tmp_path / "experiment.yaml")
    assert status == 0, err
    experiment = json.loads(out)["id"]
    with Client.enroll(server, experiment, quiet=True) as client:
        for _ in range(2):
            pulled, _ = client.pull()
            client.push({"w": pulled["w"] + 1}, num_examples=3)  # a step of +1 from the current model
            run_round(experiment)
        status, out, _ = fma(*login, "aggregates", experiment, "--json")
    first, second = sorted(json.loads(out), key=lambda a: a["round_number"])
    for aggregate in (first, second):
        assert aggregate["aggregator"] == "fedadam"
        assert aggregate["aggregator_params"] == {
            "server_learning_rate": 0.5,
            "beta_1": 0.9,
            "beta_2": 0.99,
            "tau": 0.001,
        }
        assert len(aggregate["state_content_id"]) == 64
    assert first["state_content_id"] != second["state_content_id"]  # the moments moved on
    # Reddi et al.'s Algorithm 2, Δ = 1 each round: m = 0.1, v = 0.01 → x = 0.5·0.1/(0.1 + 0.001);
    # then m = 0.19, v = 0.0199 → x += 0.5·0.19/(√0.0199 + 0.001)
    x = 0.5 * 0.1 / (0.1 + 0.001)
    x += 0.5 * 0.19 / (np.sqrt(0.0199) + 0.001)
    status, _, _ = fma(*login, "download", experiment, "-o", tmp_path / "latest.safetensors", "-q")
    assert status == 0
    np.testing.assert_allclose(read_file(tmp_path / "latest.safetensors")["w"], np.full((2, 3), x), rtol=1e-5)


def test_a_krum_experiment_from_the_cli_shows_its_selection_and_scores(
    fma, server, dev_token, run_round, tmp_path
):
    (tmp_path / "experiment.yaml").write_text(
        "name: cli-krum\naggregator: krum\naggregator_params: {f: 1, m: 2}\n"
        "round_policy: {policy: require_x_updates, x: 5}\nenrollment: open\n"
    )
    login = ("--url", server, "--token", dev_token)
    (tmp_path / "refused.yaml").write_text(
        "name: cli-krum\naggregator: krum\naggregator_params: {f: 1}\nenrollment: open\n"
    )
    status, _, err = fma(*login, "experiments", "create", tmp_path / "refused.yaml")
    assert status != 0
    assert "needs at least 5" in err  # the default policy closes rounds of 1 update
    status, out, err = fma(*login, "--json", "experiments", "create", tmp_path / "experiment.yaml")
    assert status == 0, err
    experiment = json.loads(out)["id"]
    pushed = {}
    for value in (1.0, 1.2, 0.8, 1.1, 30.0):  # the last one far from the others
        with Client.enroll(server, experiment, quiet=True) as client:
            pushed[value] = client.push({"w": np.full((2, 3), value, np.float32)}, num_examples=4)
    aggregate = run_round(experiment)
    status, out, _ = fma(*login, "aggregate", aggregate, "--json")
    assert status == 0
    report = json.loads(out)["report"]["aggregator"]
    far = str(pushed[30.0]["id"])
    assert len(report["selected"]) == 2
    assert far not in report["selected"]
    status, out, _ = fma(*login, "aggregate", aggregate)
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("UPDATE"))
    assert lines[header].split() == [
        "UPDATE",
        "WEIGHT",
        "SCORE",
        "SELECTED",
        "NORM",
        "COSINE",
        "DISTANCE",
        "OUTLIER",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1 :]}
    assert rows[far][0] == "0"
    assert rows[far][2] == "no"
    assert sorted(r[2] for r in rows.values()) == ["1", "2", "no", "no", "no"]
    assert {u for u, r in rows.items() if r[0] == "0.5"} == set(report["selected"])
    assert float(rows[far][1]) == max(float(r[1]) for r in rows.values())
    # the round measured each update against the aggregate (the mean of the 2 selected, near 1): only the
    # far one is an outlier, at √6 × (30 − about 1) from it (w has 6 values)
    assert {u for u, r in rows.items() if r[6] == "yes"} == {far}
    assert float(rows[far][5]) == pytest.approx(6**0.5 * 29, rel=0.01)
