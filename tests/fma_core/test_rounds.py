"""fma_core.rounds: the round engine, exactly once under crashes, races and lease expiry.

The round state machine (round_contract.py) runs here on InMemoryMetadataStore; its long profile
runs only when asked: ``pytest -m long tests/fma_core/test_rounds.py`` (or ``make test-long``).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Collection

import numpy as np
import pytest
from hypothesis import settings

from fma_core.aggregators import create_aggregator
from fma_core.connectors import ExperimentConfig, InMemoryMetadataStore, LocalDirectoryWeightStore
from fma_core.errors import LeaseLost
from fma_core.rounds import RoundEngine
from fma_core.weights import ArrayReader, TensorSpec, content_id, load, to_bytes

from .round_contract import SPEC, Committed, FakeClock, check_round_contract, model, profiles


class Setup:
    def __init__(self, root, *, clock=None, **config) -> None:
        self.clock = clock or FakeClock()
        self.weights = LocalDirectoryWeightStore(root)
        self.metadata = InMemoryMetadataStore(clock=self.clock)
        self.metadata.create_experiment(
            ExperimentConfig("e", tensor_spec=SPEC, **config), clients=["c0", "c1", "c2"]
        )
        self.count = 0

    def submit(self, data: bytes, *, client: str = "c0", num_examples: int = 10, base_round: int = 0) -> str:
        self.count += 1
        stored = self.weights.put(f"updates/e/{self.count}.safetensors", io.BytesIO(data))
        return self.metadata.add_update(
            "e",
            client_id=client,
            weights_key=stored.key,
            content_id=stored.sha256,
            num_examples=num_examples,
            base_round=base_round,
        ).update_id

    def engine(self, worker: str = "w", **options) -> RoundEngine:
        return RoundEngine(
            self.metadata, self.weights, worker_id=worker, lease_seconds=10, clock=self.clock, **options
        )


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


def test_a_round_aggregates_stores_and_commits(setup):
    models = [model(i) for i in range(3)]
    ids = [setup.submit(to_bytes(m), num_examples=n) for m, n in zip(models, (10, 20, 70), strict=True)]
    outcome = setup.engine().run_round("e")
    assert outcome.status == "committed"
    record = outcome.aggregate
    assert sorted(record.draft.update_ids) == sorted(ids)
    assert record.round_number == 1
    assert record.parent_aggregate_id is None
    assert sorted(record.draft.input_weights) == pytest.approx([0.1, 0.2, 0.7])
    assert record.draft.aggregator == "fedavg"
    assert record.draft.aggregator_params == {"weighted": True}
    with setup.weights.open(record.draft.weights_key) as file:
        stored = file.read()
    expected = sum(n * m["w"].astype(np.float64) for m, n in zip(models, (10, 20, 70), strict=True)) / 100
    np.testing.assert_allclose(load(stored)["w"], expected, rtol=1e-6)
    assert record.draft.content_id == content_id(stored)
    assert record.draft.size_bytes == len(stored)

    setup.submit(to_bytes(model(9)), base_round=1)
    second = setup.engine().run_round("e").aggregate
    assert second.round_number == 2
    assert second.parent_aggregate_id == record.aggregate_id


def test_a_bad_update_is_quarantined_and_the_round_goes_on(setup):
    good = setup.submit(to_bytes(model(1)))
    garbage = setup.submit(b"\x00not safetensors")
    wrong_shape = setup.submit(to_bytes({"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}))
    missing = setup.submit(to_bytes(model(2)))
    setup.weights.delete(f"updates/e/{setup.count}.safetensors")
    outcome = setup.engine().run_round("e")
    assert outcome.status == "committed"
    assert outcome.aggregate.draft.update_ids == (good,)
    assert sorted(outcome.quarantined) == sorted([garbage, wrong_shape, missing])
    assert "shape (3, 2) does not match" in setup.metadata.update_status(wrong_shape)[1]
    assert "no weights stored" in setup.metadata.update_status(missing)[1]


def test_a_round_of_only_bad_updates_commits_nothing_and_blocks_nothing(setup):
    bad = setup.submit(b"junk")
    outcome = setup.engine().run_round("e")
    assert outcome.status == "no_valid_updates"
    assert outcome.quarantined == (bad,)
    good = setup.submit(to_bytes(model(1)))
    assert setup.engine().run_round("e").aggregate.draft.update_ids == (good,)


def test_stale_updates_are_set_aside_with_the_reason(tmp_path):
    setup = Setup(tmp_path, max_staleness=1)
    for round_number in range(3):
        setup.submit(to_bytes(model(round_number)), base_round=round_number)
        assert setup.engine().run_round("e").status == "committed"
    fresh = setup.submit(to_bytes(model(5)), base_round=3)
    lagging = setup.submit(to_bytes(model(6)), base_round=2)
    stale = setup.submit(to_bytes(model(7)), base_round=1)
    outcome = setup.engine().run_round("e")
    assert sorted(outcome.aggregate.draft.update_ids) == sorted([fresh, lagging])
    assert setup.metadata.update_status(stale) == (
        "quarantined",
        "stale: trained on round 1, 2 rounds behind",
    )


def test_a_round_waits_for_its_policy_and_frees_the_claim(tmp_path):
    setup = Setup(
        tmp_path,
        round_policy={"any_of": ["all_clients", {"policy": "deadline", "seconds": 60, "min_updates": 2}]},
    )
    setup.submit(to_bytes(model(0)), client="c0")
    setup.submit(to_bytes(model(1)), client="c1")
    assert setup.engine("a").run_round("e").status == "not_ready"
    setup.clock.now += 61
    assert setup.engine("b").run_round("e").status == "committed"  # 'a' holds no lease


def test_an_algorithm_failure_releases_the_round_and_keeps_the_updates(tmp_path):
    setup = Setup(tmp_path, aggregator="trimmed_mean", aggregator_params={"trim_fraction": 0.9})
    update = setup.submit(to_bytes(model(0)))
    outcome = setup.engine().run_round("e")
    assert outcome.status == "failed"
    assert "trim_fraction" in outcome.reason
    assert setup.metadata.update_status(update) == ("pending", None)
    assert "trim_fraction" in setup.metadata.failures("e")[0]


def test_a_zombie_worker_cannot_commit_after_its_lease_was_taken_over(setup):
    setup.submit(to_bytes(model(0)))
    zombie = setup.engine("zombie")
    claim = zombie.claim("e")
    computed = zombie.compute(claim)
    setup.clock.now += 11
    assert setup.engine("healthy").run_round("e").status == "committed"
    with pytest.raises(LeaseLost):
        zombie.commit(claim, computed)
    [committed] = setup.metadata.aggregates("e")
    # the zombie's object was its abandoned claim's own: removed by the takeover; the committed one is intact
    assert committed.draft.content_id == computed.draft.content_id
    assert not setup.weights.exists(computed.draft.weights_key)
    with setup.weights.open(committed.draft.weights_key) as file:
        assert content_id(file.read()) == committed.draft.content_id


def test_many_threads_many_rounds_every_update_exactly_once(setup):
    submitted: list[str] = []
    done = threading.Event()

    def worker(name: str) -> None:
        engine = setup.engine(name)
        while not done.is_set() or setup.metadata.pending_updates("e"):
            engine.run_round("e")

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for i in range(120):
        submitted.append(setup.submit(to_bytes(model(i)), client=f"c{i % 3}"))
    done.set()
    for thread in threads:
        thread.join(timeout=60)
    aggregates = setup.metadata.aggregates("e")
    consumed = [u for a in aggregates for u in a.draft.update_ids]
    assert sorted(consumed) == sorted(submitted)  # each exactly once
    assert [a.round_number for a in aggregates] == list(range(1, len(aggregates) + 1))


class InMemoryRounds:
    """The round contract's view of an InMemoryMetadataStore."""

    def __init__(self, clock: FakeClock) -> None:
        self.metadata = InMemoryMetadataStore(clock=clock)

    def create_experiment(self, spec: TensorSpec, *, clients: int) -> tuple[str, list[str]]:
        ids = [f"c{n}" for n in range(clients)]
        self.metadata.create_experiment(ExperimentConfig("e", tensor_spec=spec), clients=ids)
        return "e", ids

    def add_update(
        self,
        experiment_id: str,
        *,
        client_id: str,
        weights_key: str,
        sha256: str,
        size: int,
        num_examples: int,
    ) -> str:
        return self.metadata.add_update(
            experiment_id,
            client_id=client_id,
            weights_key=weights_key,
            content_id=sha256,
            num_examples=num_examples,
        ).update_id

    def aggregates(self, experiment_id: str) -> list[Committed]:
        return [Committed.of(record) for record in self.metadata.aggregates(experiment_id)]

    def statuses(self, update_ids: Collection[str]) -> dict[str, tuple[str, str | None]]:
        return {u: self.metadata.update_status(u) for u in update_ids}


@pytest.mark.parametrize("profile", profiles(fast_examples=300))
def test_the_round_contract_holds_in_memory(profile: settings) -> None:
    check_round_contract(InMemoryRounds, profile)


def test_the_committed_aggregate_equals_the_aggregator_on_the_same_updates(setup):
    models = [model(i) for i in range(5)]
    for i, m in enumerate(models):
        setup.submit(to_bytes(m), num_examples=i + 1)
    record = setup.engine().run_round("e").aggregate
    with setup.weights.open(record.draft.weights_key) as file:
        stored = load(file)
    from fma_core.aggregators import UpdateInput

    direct = create_aggregator("fedavg").aggregate(
        [UpdateInput(str(i), f"{i}", i + 1, lambda m=m: ArrayReader(m)) for i, m in enumerate(models)], SPEC
    )
    np.testing.assert_allclose(stored["w"], direct["w"], rtol=1e-6)
