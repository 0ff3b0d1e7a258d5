"""fma_core.rounds: the round engine, exactly once under crashes, races and lease expiry."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import threading

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fma_core.aggregators import create_aggregator
from fma_core.connectors import ExperimentConfig, InMemoryMetadataStore, LocalDirectoryWeightStore
from fma_core.errors import LeaseLost
from fma_core.rounds import RoundEngine
from fma_core.weights import ArrayReader, TensorSpec, content_id, load, to_bytes

SPEC = TensorSpec.from_json(
    [{"name": "w", "dtype": "F32", "shape": [2, 3]}, {"name": "b", "dtype": "F32", "shape": [3]}]
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((2, 3)).astype(np.float32),
        "b": rng.standard_normal(3).astype(np.float32),
    }


class Setup:
    def __init__(self, root, *, clock=None, **config) -> None:
        self.clock = clock or Clock()
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


class RoundMachine(RuleBasedStateMachine):
    """Random interleavings of submit / claim / compute / commit / crash (SIGKILL) / lease expiry.

    After every step: no update is in two aggregates, no invalid update in any, rounds are
    numbered 1..k with each parent the previous aggregate. At the end, once leases expire and
    rounds drain, every valid update is in exactly one aggregate and every invalid one is set aside.
    """

    workers = ("w1", "w2")

    @initialize()
    def start(self) -> None:
        self.root = tempfile.mkdtemp(prefix="fma-rounds-")
        self.setup = Setup(self.root)
        self.engines = {w: self.setup.engine(w) for w in self.workers}
        self.held: dict[str, tuple] = {}
        self.valid: set[str] = set()
        self.invalid: set[str] = set()
        self.seed = 0

    def teardown(self) -> None:
        if hasattr(self, "root"):
            try:
                self.drain_and_check()
            finally:
                shutil.rmtree(self.root, ignore_errors=True)

    @rule(
        valid=st.sampled_from([True, True, True, False]),
        client=st.sampled_from(["c0", "c1", "c2"]),
        num_examples=st.integers(1, 100),
    )
    def submit(self, valid: bool, client: str, num_examples: int) -> None:
        self.seed += 1
        data = to_bytes(model(self.seed)) if valid else b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}"
        update_id = self.setup.submit(data, client=client, num_examples=num_examples)
        (self.valid if valid else self.invalid).add(update_id)

    @rule(worker=st.sampled_from(workers), compute_now=st.booleans())
    def begin(self, worker: str, compute_now: bool) -> None:
        """A worker (re)starts: whatever it held is abandoned, as after SIGKILL; it claims the
        round and perhaps computes it, and may die before finishing."""
        self.held.pop(worker, None)
        if (claim := self.engines[worker].claim("e")) is None:
            return
        self.held[worker] = (claim, None)
        if compute_now:
            self._compute(worker)

    @rule(worker=st.sampled_from(workers))
    def finish(self, worker: str) -> None:
        """The worker carries on from where it stopped: compute if not yet done, then commit."""
        if worker not in self.held:
            return
        if self.held[worker][1] is None and not self._compute(worker):
            return
        claim, computed = self.held.pop(worker)
        if computed.draft is None:
            self.setup.metadata.release_round(claim)
            return
        with contextlib.suppress(LeaseLost):
            self.engines[worker].commit(claim, computed)

    def _compute(self, worker: str) -> bool:
        claim = self.held[worker][0]
        try:
            self.held[worker] = (claim, self.engines[worker].compute(claim))
        except LeaseLost:
            del self.held[worker]
            return False
        return True

    @rule(worker=st.sampled_from(workers))
    def whole_round(self, worker: str) -> None:
        if worker not in self.held:
            self.engines[worker].run_round("e")

    @rule(seconds=st.sampled_from([11, 1]))
    def time_passes(self, seconds: int) -> None:
        self.setup.clock.now += seconds

    @precondition(lambda self: hasattr(self, "setup"))
    @invariant()
    def exactly_once_so_far(self) -> None:
        aggregates = self.setup.metadata.aggregates("e")
        consumed = [u for a in aggregates for u in a.draft.update_ids]
        assert len(consumed) == len(set(consumed)), "an update was aggregated twice"
        assert not set(consumed) & self.invalid, "an invalid update was aggregated"
        assert [a.round_number for a in aggregates] == list(range(1, len(aggregates) + 1))
        parents = [None, *(a.aggregate_id for a in aggregates)][: len(aggregates)]
        assert [a.parent_aggregate_id for a in aggregates] == parents
        for aggregate in aggregates:
            for update_id in aggregate.draft.update_ids:
                assert self.setup.metadata.update_status(update_id) == ("consumed", aggregate.aggregate_id)

    @precondition(lambda self: hasattr(self, "setup"))
    @invariant()
    def valid_updates_are_pending_or_consumed(self) -> None:
        for update_id in self.valid:
            assert self.setup.metadata.update_status(update_id)[0] in {"pending", "consumed"}

    def drain_and_check(self) -> None:
        self.setup.clock.now += 100  # every lease expires
        engine = self.setup.engine("drain")
        while engine.run_round("e").status not in {"idle"}:
            pass
        consumed = [u for a in self.setup.metadata.aggregates("e") for u in a.draft.update_ids]
        assert sorted(consumed) == sorted(self.valid)
        for update_id in self.invalid:
            assert self.setup.metadata.update_status(update_id)[0] == "quarantined"


TestRoundMachine = RoundMachine.TestCase
TestRoundMachine.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)


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
