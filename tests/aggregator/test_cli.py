"""``fma-aggregator``: run-once, status (pending / running / failed per experiment), and the help text."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from aggregator_support import submit

from fma_aggregator.cli import main
from fma_aggregator.engine import build_engine
from fma_django import lifecycle
from fma_django.models import Experiment, ModelAggregate
from fma_django.store import DjangoMetadataStore


def test_help_names_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "fma_aggregator.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("run-once", "worker", "status", "celery -A fma_aggregator worker"):
        assert command in result.stdout


def test_run_once_runs_every_ready_round_and_reports_it(make_experiment, capsys):
    ready = make_experiment(name="ready")
    waiting = make_experiment(name="waiting", round_policy={"policy": "require_x_updates", "x": 2})
    make_experiment(name="quiet")
    submit(ready, 1.0)
    submit(waiting, 1.0)
    assert main(["run-once", "--json"]) == 0
    outcomes = {o["experiment_id"]: o for o in json.loads(capsys.readouterr().out)}
    assert set(outcomes) == {str(ready.pk), str(waiting.pk)}
    assert outcomes[str(ready.pk)]["status"] == "committed"
    assert outcomes[str(ready.pk)]["round"] == 1
    assert outcomes[str(waiting.pk)]["status"] == "not_ready"
    assert ModelAggregate.objects.filter(experiment=ready).count() == 1

    submit(waiting, 2.0)
    assert main(["run-once", "--experiment", str(waiting.pk)]) == 0
    assert f"experiment {waiting.pk}: committed (round 1, 2 updates)" in capsys.readouterr().out


def test_run_once_exits_non_zero_when_a_round_fails(make_experiment, capsys):
    experiment = make_experiment(aggregator="trimmed_mean", aggregator_params={"trim_fraction": 0.1})
    submit(experiment, 1.0)
    Experiment.objects.filter(pk=experiment.pk).update(aggregator_params={"trim_fraction": 0.9})
    assert main(["run-once"]) == 1
    assert "failed" in capsys.readouterr().out


def test_status_shows_pending_running_and_failed_rounds(make_experiment, capsys):
    busy = make_experiment(name="busy")
    broken = make_experiment(
        name="broken", aggregator="trimmed_mean", aggregator_params={"trim_fraction": 0.1}
    )
    done = make_experiment(name="done")
    submit(busy, 1.0)
    submit(broken, 1.0)
    submit(done, 1.0)
    assert build_engine().run_round(str(done.pk)).status == "committed"
    Experiment.objects.filter(pk=broken.pk).update(aggregator_params={"trim_fraction": 0.9})
    assert build_engine().run_round(str(broken.pk)).status == "failed"
    claim = DjangoMetadataStore().claim_round(str(busy.pk), worker="worker-7", lease_seconds=600)
    assert claim is not None
    submit(busy, 2.0)  # arrives while the round runs: pending for the next one

    assert main(["status", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["busy"]["running"]["worker"] == "worker-7"
    assert rows["busy"]["running"]["round"] == 1
    assert 0 < rows["busy"]["running"]["lease_seconds_left"] <= 600
    assert rows["busy"]["pending_updates"] == 2
    assert rows["broken"]["failures_since_last_round"] == 1
    assert "trim_fraction" in rows["broken"]["last_failure"]
    assert rows["broken"]["pending_updates"] == 1
    assert rows["done"] | {"experiment_id": None} == {
        "experiment_id": None,
        "name": "done",
        "state": "collecting",
        "rounds_completed": 1,
        "pending_updates": 0,
        "quarantined_updates": 0,
        "running": None,
        "failures_since_last_round": 0,
        "last_failure": None,
    }

    assert main(["status"]) == 0
    table = capsys.readouterr().out
    assert "round 1 on worker-7" in table
    assert "1 (ConfigurationError: trim_fraction must be in [0, 0.5), not 0.9)" in table


def test_the_sweep_lists_pending_experiments_without_a_live_lease(make_experiment):
    store = DjangoMetadataStore()
    pending, paused, held = (make_experiment(name=n) for n in ("pending", "paused", "held"))
    for experiment in (pending, paused, held):
        submit(experiment, 1.0)
    lifecycle.experiment_set_state(experiment=paused, state="paused", user=paused.developer)
    assert store.claim_round(str(held.pk), worker="w", lease_seconds=60) is not None
    now = time.time()
    assert store.experiments_to_sweep(now=now) == [str(pending.pk)]
    assert store.experiments_to_sweep(now=now + 61) == sorted([str(pending.pk), str(held.pk)], key=int)
    assert len(store.enrolled_clients(str(pending.pk))) == 1


@pytest.mark.parametrize("command", [["run-once", "--experiment"], ["bogus"]])
def test_bad_usage_is_refused_with_a_message(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2
    assert "usage: fma-aggregator" in capsys.readouterr().err
