"""What every MetadataStore must keep under crashes, races and lease expiry: the round state machine.

``RoundMachine`` drives ``RoundEngine`` workers on one store through random interleavings of
submit / claim / compute / commit / crash (a worker abandoning what it held, as after SIGKILL, or
giving it back, as after SIGTERM) / lease expiry (the fake clock jumps past the lease). At every
step: no round is claimed while another claim's lease is live, no superseded claim commits, no
update is in two aggregates, no invalid update is in any, rounds are numbered 1..k with each parent
the previous aggregate, and the store holds exactly the aggregates whose commits a worker saw
succeed. After each example, once every lease has expired and the rounds have drained: every valid
update is in exactly one aggregate, every invalid one is quarantined, and each aggregate's stored
weights are the example-weighted mean of its updates.

A store's tests give the machine a ``RoundStore`` factory (in memory: tests/fma_core/test_rounds.py;
Django on the pass's database: tests/fma_django/test_round_contract.py) and run
``check_round_contract`` under each of its ``profiles``: ``fast`` in the default run, ``long``
behind the ``long`` marker, which the default run deselects. To run the long one: ``make test-long``,
or ``pytest -m long tests/fma_core/test_rounds.py tests/fma_django/test_round_contract.py`` (with
``FMA_TEST_DATABASE=postgresql`` for PostgreSQL).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from fma_core.connectors import AggregateRecord, LocalDirectoryWeightStore, MetadataStore, RoundClaim
from fma_core.errors import LeaseLost
from fma_core.rounds import ComputedRound, RoundEngine, RoundOutcome
from fma_core.weights import TensorSpec, content_id, load, to_bytes

SPEC = TensorSpec.from_json(
    [{"name": "w", "dtype": "F32", "shape": [2, 3]}, {"name": "b", "dtype": "F32", "shape": [3]}]
)
# Long enough that no heartbeat beats during a step (it renews every third of the lease, in real
# seconds), so a lease ends only when the fake clock says so.
LEASE_SECONDS = 600.0

LONG = settings(max_examples=1000, stateful_step_count=80, deadline=None)


def profiles(*, fast_examples: int) -> list[object]:
    """The profiles a store's tests run the contract under: ``fast``, ``fast_examples`` examples of up
    to 30 steps (a store sets it to what it runs in about 15 s on a 2-core machine), in the default
    run; ``long``, 1,000 examples of up to 80 steps, behind the ``long`` marker."""
    fast = settings(max_examples=fast_examples, stateful_step_count=30, deadline=None)
    return [pytest.param(fast, id="fast"), pytest.param(LONG, id="long", marks=pytest.mark.long)]


class FakeClock:
    """Epoch seconds that move only when a test moves them."""

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


def broken(seed: int) -> bytes:
    """Bytes whose safetensors header is not JSON; distinct per seed, as stored updates' contents are."""
    header = b"{broken %d}" % seed
    return len(header).to_bytes(8, "little") + header


@dataclass(frozen=True)
class Committed:
    """An aggregate as the contract compares it: what a commit returned, or what the store holds."""

    aggregate_id: str
    round_number: int
    parent_aggregate_id: str | None
    update_ids: tuple[str, ...]  # sorted
    weights_key: str
    content_id: str

    @classmethod
    def of(cls, record: AggregateRecord) -> Committed:
        return cls(
            aggregate_id=record.aggregate_id,
            round_number=record.round_number,
            parent_aggregate_id=record.parent_aggregate_id,
            update_ids=tuple(sorted(record.draft.update_ids)),
            weights_key=record.draft.weights_key,
            content_id=record.draft.content_id,
        )


class RoundStore(Protocol):
    """A store under test, fresh for one example and reading the machine's clock: the MetadataStore,
    what the API does to it in a deployment (create, enroll, accept an update) and what a test reads back."""

    metadata: MetadataStore

    def create_experiment(self, spec: TensorSpec, *, clients: int) -> tuple[str, list[str]]:
        """A new experiment taking ``spec`` with ``clients`` enrolled clients: its id and theirs."""

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
        """Accept a pending update trained on the initial model, its bytes already stored; its id."""

    def aggregates(self, experiment_id: str) -> list[Committed]:
        """The experiment's aggregates, by round number."""

    def statuses(self, update_ids: Collection[str]) -> dict[str, tuple[str, str | None]]:
        """Each update's ``(status, aggregate id if consumed, else the quarantine reason or None)``."""


OpenStore = Callable[[FakeClock], RoundStore]


def check_round_contract(open_store: OpenStore, profile: settings) -> None:
    """Run the round state machine on the stores ``open_store`` gives, one per example."""
    run_state_machine_as_test(lambda: RoundMachine(open_store), settings=profile)


class RoundMachine(RuleBasedStateMachine):
    """Random interleavings of submit / claim / compute / commit / crash / lease expiry (module docstring)."""

    workers = ("w1", "w2")

    def __init__(self, open_store: OpenStore) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.root = tempfile.mkdtemp(prefix="fma-rounds-")
        self.weights = LocalDirectoryWeightStore(self.root)
        self.store = open_store(self.clock)
        self.experiment_id, self.clients = self.store.create_experiment(SPEC, clients=3)
        self.engines = {w: self.engine(w) for w in self.workers}
        self.held: dict[str, tuple[RoundClaim, ComputedRound | None]] = {}
        self.submitted: dict[str, tuple[int, int]] = {}  # valid update id -> (model seed, num_examples)
        self.invalid: set[str] = set()
        self.committed: list[Committed] = []  # every commit a worker saw succeed, in order
        self.live: RoundClaim | None = None  # the last claim granted and not ended (it may have expired)
        self.seed = 0

    def teardown(self) -> None:
        try:
            self.drain_and_check()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # Rules

    @rule(
        valid=st.sampled_from([True, True, True, False]),
        client=st.integers(0, 2),
        num_examples=st.integers(1, 100),
    )
    def submit(self, valid: bool, client: int, num_examples: int) -> None:
        self.seed += 1
        data = to_bytes(model(self.seed)) if valid else broken(self.seed)
        stored = self.weights.put(f"updates/{self.experiment_id}/{self.seed}.safetensors", io.BytesIO(data))
        update_id = self.store.add_update(
            self.experiment_id,
            client_id=self.clients[client],
            weights_key=stored.key,
            sha256=stored.sha256,
            size=stored.size,
            num_examples=num_examples,
        )
        if valid:
            self.submitted[update_id] = (self.seed, num_examples)
        else:
            self.invalid.add(update_id)

    @rule(worker=st.sampled_from(workers), graceful=st.booleans(), compute_now=st.booleans())
    def begin(self, worker: str, graceful: bool, compute_now: bool) -> None:
        """A worker (re)starts: whatever it held is abandoned, as after SIGKILL, or given back, as
        after SIGTERM; it claims the round and perhaps computes it, and may die before finishing."""
        if (held := self.held.pop(worker, None)) is not None and graceful:
            self.release(held[0])
        blocked = self.lease_surely_live()
        if (claim := self.engines[worker].claim(self.experiment_id)) is None:
            return
        assert not blocked, "a round was claimed while another claim's lease was live"
        self.live = claim
        self.held[worker] = (claim, None)
        if compute_now:
            self.compute(worker)

    @rule(worker=st.sampled_from(workers))
    def proceed(self, worker: str) -> None:
        """The worker carries on with its next stage: it computes the round it claimed, or commits
        the round it computed; holding nothing, it runs a whole round."""
        if worker not in self.held:
            self.run_round(self.engines[worker])
        elif self.held[worker][1] is None:
            self.compute(worker)
        else:
            self.commit(worker)

    @rule(seconds=st.sampled_from([LEASE_SECONDS + 1, LEASE_SECONDS / 2]))
    def time_passes(self, seconds: float) -> None:
        """Past the lease, or half of it: twice half a lease ends it exactly."""
        self.clock.now += seconds

    # What the rules do

    def engine(self, worker: str) -> RoundEngine:
        return RoundEngine(
            self.store.metadata, self.weights, worker_id=worker, lease_seconds=LEASE_SECONDS, clock=self.clock
        )

    def lease_surely_live(self) -> bool:
        """Whether the live claim was granted less than a lease ago: renewals only lengthen a lease,
        so no other claim may be granted now."""
        return self.live is not None and self.clock() < self.live.claimed_at + LEASE_SECONDS

    def compute(self, worker: str) -> None:
        claim = self.held[worker][0]
        try:
            self.held[worker] = (claim, self.engines[worker].compute(claim))
        except LeaseLost:
            del self.held[worker]

    def commit(self, worker: str) -> None:
        claim, computed = self.held.pop(worker)
        if computed.draft is None:  # every update it had was unusable
            self.release(claim)
            return
        try:
            record = self.engines[worker].commit(claim, computed)
        except LeaseLost:
            return
        assert self.live is not None, "a superseded claim committed"
        assert claim.token == self.live.token, "a superseded claim committed"
        self.committed.append(Committed.of(record))
        self.live = None

    def release(self, claim: RoundClaim) -> None:
        self.store.metadata.release_round(claim)
        if self.live is not None and claim.token == self.live.token:
            self.live = None

    def run_round(self, engine: RoundEngine) -> RoundOutcome:
        blocked = self.lease_surely_live()
        outcome = engine.run_round(self.experiment_id)
        # the policy is "any update", and every algorithm input is well formed: nothing else may happen
        assert outcome.status in {"committed", "idle", "no_valid_updates"}, outcome
        if outcome.status != "idle":  # it claimed the round, and its claim has ended
            assert not blocked, "a round was claimed while another claim's lease was live"
            self.live = None
        if outcome.aggregate is not None:
            self.committed.append(Committed.of(outcome.aggregate))
        return outcome

    # Checks

    @invariant()
    def the_store_holds_exactly_the_commits_seen(self) -> None:
        assert self.store.aggregates(self.experiment_id) == self.committed

    @invariant()
    def exactly_once_so_far(self) -> None:
        consumed = [u for a in self.committed for u in a.update_ids]
        assert len(consumed) == len(set(consumed)), "an update was aggregated twice"
        assert not set(consumed) & self.invalid, "an invalid update was aggregated"
        assert [a.round_number for a in self.committed] == list(range(1, len(self.committed) + 1))
        parents = [None, *(a.aggregate_id for a in self.committed)][: len(self.committed)]
        assert [a.parent_aggregate_id for a in self.committed] == parents
        statuses = self.store.statuses([*self.submitted, *self.invalid])
        for aggregate in self.committed:
            for update_id in aggregate.update_ids:
                assert statuses[update_id] == ("consumed", aggregate.aggregate_id)
        for update_id in self.submitted:
            assert statuses[update_id][0] in {"pending", "consumed"}, statuses[update_id]
        for update_id in self.invalid:
            assert statuses[update_id][0] in {"pending", "quarantined"}, statuses[update_id]

    def drain_and_check(self) -> None:
        self.clock.now += LEASE_SECONDS + 1  # every lease expires
        engine = self.engine("drain")
        # each round consumes or quarantines at least one update, so this many runs end idle
        for _ in range(len(self.submitted) + len(self.invalid) + 1):
            if self.run_round(engine).status == "idle":
                break
        else:
            raise AssertionError("the rounds did not drain")
        self.the_store_holds_exactly_the_commits_seen()
        self.exactly_once_so_far()
        assert sorted(u for a in self.committed for u in a.update_ids) == sorted(self.submitted)
        statuses = self.store.statuses(self.invalid)
        assert all(statuses[u][0] == "quarantined" for u in self.invalid), statuses
        for aggregate in self.committed:
            self.check_weights(aggregate)

    def check_weights(self, aggregate: Committed) -> None:
        """The stored aggregate is intact and is the example-weighted mean of exactly its updates."""
        with self.weights.open(aggregate.weights_key) as file:
            data = file.read()
        assert content_id(data) == aggregate.content_id
        inputs = [(model(seed), n) for seed, n in (self.submitted[u] for u in aggregate.update_ids)]
        total = sum(n for _, n in inputs)
        for name, array in load(data).items():
            expected = sum(n * weights[name].astype(np.float64) for weights, n in inputs) / total
            np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-6)
