"""The README's first command, shortened: real service, real client processes, a model that learns."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np

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
    stdout, rows = run_quickstart(tmp_path, script_env(), "--clients", "3", "--rounds", "4", "--epochs", "2")
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
