"""The README's first command, shortened: real service, real client processes, a model that learns."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests

from .support import EXAMPLES, load_example, script_env

RUN = EXAMPLES / "quickstart" / "run.py"


def run_quickstart(tmp_path, env, *options: str) -> tuple[str, list[dict[str, str]]]:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(RUN), "--out", str(out), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with (out / "rounds.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    return done.stdout, rows


def test_a_short_federated_run_learns(tmp_path):
    stdout, rows = run_quickstart(
        tmp_path, script_env(), "--clients", "3", "--rounds", "4", "--epochs", "2", "--keep-data"
    )
    assert "/api/docs/" in stdout
    assert "/admin/" in stdout
    assert "failed" not in stdout
    _initial, *rounds = rows
    assert [r["round"] for r in rounds] == ["1", "2", "3", "4"]
    assert {r["participants"] for r in rounds} == {"3"}  # every client in every round, none by deadline
    accuracy = [float(r["test_accuracy"]) for r in rows]
    assert accuracy[0] < 0.2  # the initial model guesses
    assert accuracy[-1] > 0.8  # chance is 0.1
    assert accuracy[-1] > accuracy[1] or accuracy[1] > 0.9
    assert "centralized (pooled data, 8 epochs)" in stdout
    assert "elapsed:" in stdout
    # each round's held-out accuracy and loss reached the service as the developer's evaluation
    data_dir = Path(stdout.rsplit("data kept in ", 1)[1].split()[0])
    try:
        with contextlib.closing(sqlite3.connect(data_dir / "fma.sqlite3")) as database:
            stored = database.execute(
                "SELECT a.round_number, e.source, e.metrics, e.num_examples FROM fma_django_evaluation e "
                "JOIN fma_django_modelaggregate a ON a.id = e.aggregate_id ORDER BY a.round_number"
            ).fetchall()
    finally:
        shutil.rmtree(data_dir)
    assert [(r, source, examples) for r, source, _, examples in stored] == [
        (n, "developer", 450) for n in (1, 2, 3, 4)
    ]
    for (_, _, metrics, _), row in zip(stored, rounds, strict=True):
        reported = json.loads(metrics)
        assert f"{reported['accuracy']:.4f}" == row["test_accuracy"]
        assert f"{reported['loss']:.4f}" == row["test_loss"]


def test_the_data_split_is_non_iid_and_covers_the_training_set():
    digits = load_example("quickstart/digits.py", "quickstart_digits")
    split = digits.load(0)
    assert (len(split.y_train), len(split.y_test)) == (1347, 450)
    parts = digits.dirichlet_partition(split.y_train, clients=10, alpha=0.5, seed=0)
    together = np.sort(np.concatenate(parts))
    assert np.array_equal(together, np.arange(len(split.y_train)))  # each example to exactly one client
    shares = np.array([np.bincount(split.y_train[p], minlength=10) / max(len(p), 1) for p in parts])
    assert shares.max() > 0.3  # some client is dominated by one digit (a uniform split gives ~0.1)
    again = digits.dirichlet_partition(split.y_train, clients=10, alpha=0.5, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))  # fixed seed


def test_a_client_without_examples_sits_out_and_the_rounds_wait_only_for_those_that_train(tmp_path):
    """At α = 0.01 with seed 0, client 0 of 4 gets no examples: it does not enroll, so "every
    enrolled client has pushed" closes each round with the other three (issue 22 item 6)."""
    stdout, rows = run_quickstart(
        tmp_path, script_env(), "--clients", "4", "--alpha", "0.01", "--rounds", "2", "--epochs", "1"
    )
    assert "examples per client: 0, 404, 539, 404" in stdout
    assert "client(s) 0 got no examples" in stdout
    assert "3 clients enrolled" in stdout
    assert "failed" not in stdout
    assert [(r["round"], r["participants"]) for r in rows[1:]] == [("1", "3"), ("2", "3")]


SHORT = ["--clients", "2", "--rounds", "3", "--epochs", "1"]
CRASHING_MODEL = '''
"""The quickstart's softmax, except that a process's second training raises: clients die in round 2."""
import softmax

initial_weights, accuracy, loss = softmax.initial_weights, softmax.accuracy, softmax.loss
trainings = 0


def train(*args, **kwargs):
    global trainings
    trainings += 1
    if trainings == 2:
        raise RuntimeError("this client breaks in its second round")
    return softmax.train(*args, **kwargs)
'''


def test_a_run_whose_rounds_do_not_all_complete_says_so_and_exits_non_zero(tmp_path):
    (tmp_path / "crashing.py").write_text(CRASHING_MODEL)
    env = {
        **script_env(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, str(RUN), "--out", str(tmp_path / "out"), "--model", "crashing", *SHORT],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "federated (fedavg, 1 of 3 rounds)" in done.stdout
    assert "client 0 failed: RuntimeError: this client breaks in its second round" in done.stdout
    assert "INCOMPLETE: 1 of 3 rounds completed; client(s) 0, 1 failed" in done.stderr


def test_the_gap_is_the_difference_of_the_printed_percentages():
    """97.34 % and 95.76 % print as 97.3 % and 95.8 %: the gap printed beside them is +1.5, not the
    unrounded +1.6."""
    run = load_example("quickstart/run.py", "quickstart_run")
    central, final = run.percent(0.9734), run.percent(0.9576)
    assert (f"{central:.1f}", f"{final:.1f}") == ("97.3", "95.8")
    assert f"{central - final:+.1f}" == "+1.5"
    assert f"{(0.9734 - 0.9576) * 100:+.1f}" == "+1.6"  # what the run printed before


def test_sigterm_stops_the_service_and_the_clients_and_removes_the_temporary_folder(tmp_path):
    process = subprocess.Popen(
        [sys.executable, str(RUN), "--out", str(tmp_path / "out"), "--clients", "2", "--rounds", "30"],
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the test's own cleanup can reach everything it started
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()
    try:
        seen = []
        while not any("training:" in line for line in seen):  # the clients run and rounds go on
            seen.append(lines.get(timeout=180))
        data_dir = Path(seen[0].rsplit(" in ", 1)[1].strip())
        url = next(line.split()[1] for line in seen if line.strip().startswith("API "))
        assert data_dir.is_dir()
        assert requests.get(url, timeout=10).status_code == 401  # the service answers
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
        assert not data_dir.exists()
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=10)
        assert not [pid for pid in running() if str(data_dir) in cmdline(pid)]  # no client left
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=30)  # at end of output, once every process that holds the pipe is gone
        process.stdout.close()


def running() -> list[str]:
    return [entry.name for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


def test_an_asynchronous_run_with_slow_clients_learns_in_rounds_of_the_buffer(tmp_path):
    stdout, rows = run_quickstart(
        tmp_path,
        script_env(),
        "--async", "--buffer", "2", "--slow", "2", "--slow-factor", "3",
        "--clients", "4", "--rounds", "6", "--epochs", "2",
    )  # fmt: skip
    assert len(rows) == 7  # the initial model, then six rounds
    assert all(row["participants"] == "2" for row in rows[1:])  # each round takes the buffer's K
    accuracies = [float(row["test_accuracy"]) for row in rows]
    assert accuracies[-1] > accuracies[0] + 0.3
    assert "failed" not in stdout


def test_a_secure_run_learns_as_the_plain_one(tmp_path):
    """--secure-aggregation: the same rounds through the SecAgg+ stages, each round's accuracy the plain run's."""
    options = ("--clients", "3", "--rounds", "2", "--epochs", "2")
    _, plain = run_quickstart(tmp_path / "plain", script_env(), *options)
    _, secure = run_quickstart(tmp_path / "secure", script_env(), *options, "--secure-aggregation")
    assert [r["participants"] for r in secure[1:]] == ["3", "3"]  # counted from each round's secure report
    assert [r["test_accuracy"] for r in secure] == [r["test_accuracy"] for r in plain]
