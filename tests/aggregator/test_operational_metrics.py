"""The Prometheus figures that no single request shows (issue 20, item 2): a lease taken over from a
dead worker, and the sweep's runs, counted in the process where they happen."""

from __future__ import annotations

from aggregator_support import submit
from prometheus_client import REGISTRY

from fma_core.rounds import RoundEngine
from fma_django.housekeeping import housekeeping_sweep
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_round_taken_over_from_a_dead_worker_counts_one_takeover_and_one_round(make_experiment):
    experiment = make_experiment()
    submit(experiment, 1.0)
    clock = Clock()
    engines = [
        RoundEngine(
            DjangoMetadataStore(clock=clock), weight_store(), worker_id=name, lease_seconds=60, clock=clock
        )
        for name in ("dead", "alive")
    ]
    takeovers = sample("fma_lease_takeovers_total", experiment="")
    completed = sample("fma_rounds_total", outcome="completed", experiment="")
    assert engines[0].claim(str(experiment.pk)) is not None  # claimed, then the worker died
    clock.now += 61
    assert engines[1].run_round(str(experiment.pk)).status == "committed"
    assert sample("fma_lease_takeovers_total", experiment="") == takeovers + 1
    assert sample("fma_rounds_total", outcome="completed", experiment="") == completed + 1


def test_each_sweep_counts_one_run_its_duration_and_what_its_chores_did(transactional_db):
    runs = sample("fma_sweeps_total")
    durations = sample("fma_sweep_duration_seconds_count")
    done = housekeeping_sweep(lease_seconds=900)
    assert sample("fma_sweeps_total") == runs + 1
    assert sample("fma_sweep_duration_seconds_count") == durations + 1
    assert set(done) == {
        "uploads_expired",
        "uploads_checking",
        "update_weights_removed",
        "orphans_removed",
        "secure_rounds_advanced",
        "secure_rounds_summing",
    }
