"""fma_core.shards and the engine's sharded path: balanced plans, bit-identical results, one commit."""

from __future__ import annotations

import io
import itertools
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fma_core.connectors import (
    AggregateRecord,
    ExperimentConfig,
    InMemoryMetadataStore,
    LocalDirectoryWeightStore,
)
from fma_core.errors import InvalidWeights, LeaseLost, StoreUnavailable
from fma_core.peak_memory import PeakMemory
from fma_core.rounds import RoundEngine, RoundOutcome
from fma_core.shards import ALIGN_ELEMENTS, Piece, RoundPlan, balance_shards, shard_nbytes
from fma_core.weights import TensorSpec, content_id, to_bytes

SHAPES = {"embed": (300, 64), "dense": (64, 64), "out": (64, 10), "bias": (10,), "steps": ()}
SPEC = TensorSpec.from_json(
    [{"name": n, "dtype": "I64" if n == "steps" else "F32", "shape": list(s)} for n, s in SHAPES.items()]
)


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items() if n != "steps"}
    weights["steps"] = np.array(seed * 7, dtype=np.int64)
    return weights


def world(root, **config):
    clock = Clock()
    metadata = InMemoryMetadataStore(clock=clock)
    metadata.create_experiment(ExperimentConfig("e", tensor_spec=SPEC, **config), clients=["a", "b"])
    weights = LocalDirectoryWeightStore(root)
    for i in range(5):
        stored = weights.put(f"updates/{i}.safetensors", io.BytesIO(to_bytes(model(i))))
        metadata.add_update(
            "e", client_id="ab"[i % 2], weights_key=stored.key, content_id=stored.sha256, num_examples=i + 1
        )
    return clock, metadata, weights


@given(
    sizes=st.lists(st.integers(0, 10_000), min_size=1, max_size=30),
    dtypes=st.lists(st.sampled_from(["U8", "F32", "F64"]), min_size=30, max_size=30),
    shard_bytes=st.integers(1, 50_000),
)
def test_shards_cut_the_data_into_contiguous_ranges_in_spec_order_and_balance(sizes, dtypes, shard_bytes):
    spec = TensorSpec.from_json(
        [{"name": f"t{i}", "dtype": dtypes[i], "shape": [n]} for i, n in enumerate(sizes)]
    )
    shards = balance_shards(spec, shard_bytes)
    pieces = [piece for shard in shards for piece in shard]
    walked = []
    for info in spec:  # each tensor covered once, in order, by adjacent element ranges
        mine = [p for p in pieces if p.name == info.name]
        assert mine[0].start == 0
        assert mine[-1].stop == info.size
        assert all(a.stop == b.start and a.start < a.stop for a, b in itertools.pairwise(mine))
        walked += mine
    assert pieces == walked
    assert sum(shard_nbytes(spec, shard) for shard in shards) == spec.nbytes
    if spec.nbytes <= shard_bytes:
        assert len(shards) == 1
    ideal = spec.nbytes / len(shards)
    assert max(shard_nbytes(spec, shard) for shard in shards) <= ideal + 2 * ALIGN_ELEMENTS * 8


@given(
    sizes=st.lists(st.integers(0, 100_000), min_size=1, max_size=30),
    shard_bytes=st.integers(1, 500_000),
    min_bytes=st.integers(1, 200_000),
)
def test_no_shard_of_a_sharded_round_is_smaller_than_the_stores_smallest_part(sizes, shard_bytes, min_bytes):
    """The last shard included: a server state's upload puts each state tensor's last shard before the
    next state tensor's first, so no part but the upload's very last may be small."""
    spec = TensorSpec.from_json(
        [{"name": f"t{i}", "dtype": "F32", "shape": [n]} for i, n in enumerate(sizes)]
    )
    shards = balance_shards(spec, shard_bytes, min_bytes=min_bytes)
    if len(shards) > 1:
        assert all(shard_nbytes(spec, shard) >= min_bytes for shard in shards)
    assert sum(shard_nbytes(spec, shard) for shard in shards) == spec.nbytes


def test_one_tensor_larger_than_the_shard_size_is_cut_into_element_ranges():
    spec = TensorSpec.from_json([{"name": "huge", "dtype": "F32", "shape": [1000, 1000]}])
    shards = balance_shards(spec, spec.nbytes // 4)
    assert [[(p.name, p.start, p.stop) for p in shard] for shard in shards] == [
        [("huge", 0, 249_856)],
        [("huge", 249_856, 499_712)],
        [("huge", 499_712, 749_568)],
        [("huge", 749_568, 1_000_000)],
    ]


def test_no_limit_or_a_small_model_is_one_shard():
    whole = tuple(Piece(t.name, 0, t.size) for t in SPEC)
    assert balance_shards(SPEC, None) == (whole,)
    assert balance_shards(SPEC, SPEC.nbytes) == (whole,)


@pytest.mark.parametrize("aggregator", ["fedavg", "median", "trimmed_mean"])
def test_a_sharded_round_is_bit_identical_to_the_unsharded_one(tmp_path, aggregator):
    params = {"trim_fraction": 0.2} if aggregator == "trimmed_mean" else {}
    _, whole_meta, whole_store = world(tmp_path / "whole", aggregator=aggregator, aggregator_params=params)
    whole = RoundEngine(whole_meta, whole_store).run_round("e").aggregate

    _, meta, store = world(tmp_path / "sharded", aggregator=aggregator, aggregator_params=params)
    engine = RoundEngine(meta, store, shard_bytes=SPEC.nbytes // 3)
    plan = engine.start_round("e")
    assert isinstance(plan, RoundPlan)
    assert len(plan.shards) >= 3
    # every shard computed by a different "worker" from the plan as it travels: JSON
    outcomes = []
    for index in reversed(range(len(plan.shards))):
        travelled = RoundPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
        outcomes.append(RoundEngine(meta, store, worker_id=f"shard-{index}").finish_shard(travelled, index))
    *waiting, last = outcomes
    assert [o.status for o in waiting] == ["shard_done"] * (len(plan.shards) - 1)  # the last one commits
    assert last.status == "committed"
    record = last.aggregate

    assert record.draft.content_id == whole.draft.content_id
    with store.open(record.draft.weights_key) as a, whole_store.open(whole.draft.weights_key) as b:
        assert a.read() == b.read()
    assert sorted(record.draft.update_ids) == sorted(whole.draft.update_ids)
    assert record.draft.input_weights == whole.draft.input_weights
    assert record.draft.peak_memory_bytes > 0
    assert stored_files(tmp_path / "sharded", "shards") == []  # cleaned up
    assert stored_files(tmp_path / "sharded", ".uploads") == []
    assert meta.pending_updates("e") == []


def test_run_round_computes_every_shard_itself_when_nothing_distributes_them(tmp_path):
    _, meta, store = world(tmp_path / "a")
    _, whole_meta, whole_store = world(tmp_path / "b")
    sharded = RoundEngine(meta, store, shard_bytes=1).run_round("e")
    whole = RoundEngine(whole_meta, whole_store).run_round("e")
    assert sharded.status == "committed"
    assert sharded.aggregate.draft.content_id == whole.aggregate.draft.content_id


def test_a_plan_from_a_round_taken_over_cannot_commit(tmp_path):
    clock, meta, store = world(tmp_path)
    engine = RoundEngine(meta, store, lease_seconds=10, shard_bytes=SPEC.nbytes // 2, clock=clock)
    plan = engine.start_round("e")
    assert engine.finish_shard(plan, 0).status == "shard_done"
    clock.now += 11
    assert RoundEngine(meta, store, clock=clock).run_round("e").status == "committed"
    assert engine.finish_shard(plan, 1).status == "idle"  # it stops: the round was finished elsewhere
    assert len(meta.aggregates("e")) == 1
    assert meta.failures("e") == []


def test_a_failed_shard_gives_the_round_back_with_its_reason(tmp_path):
    _, meta, store = world(tmp_path)
    engine = RoundEngine(meta, store, shard_bytes=SPEC.nbytes // 2)
    plan = engine.start_round("e")
    engine.finish_shard(plan, 0)
    engine.fail_round(plan, "worker lost")
    assert meta.failures("e") == ["worker lost"]
    assert len(meta.pending_updates("e")) == 5
    assert stored_files(tmp_path, "shards") == stored_files(tmp_path, ".uploads") == []
    assert engine.run_round("e").status == "committed"


def test_an_update_unreadable_in_a_shard_is_quarantined_and_the_retry_goes_on_without_it(tmp_path):
    _, meta, store = world(tmp_path)
    engine = RoundEngine(meta, store, shard_bytes=SPEC.nbytes // 2)
    plan = engine.start_round("e")
    victim = meta.pending_updates("e")[2]
    path = tmp_path / victim.weights_key
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated after the header check
    outcomes = [engine.finish_shard(plan, index) for index in range(len(plan.shards))]
    failed = outcomes[0]  # the first shard reads the victim and gives the round up; the others stop
    assert (failed.status, failed.retry, failed.quarantined) == ("failed", True, (victim.update_id,))
    assert [o.status for o in outcomes[1:]] == ["idle"] * (len(outcomes) - 1)
    assert meta.update_status(victim.update_id)[0] == "quarantined"
    assert stored_files(tmp_path, "shards") == stored_files(tmp_path, ".uploads") == []
    outcome = engine.run_round("e")
    assert outcome.status == "committed"
    assert victim.update_id not in outcome.aggregate.draft.update_ids
    assert len(outcome.aggregate.draft.update_ids) == 4


def test_a_deadline_policy_says_when_to_wake_up_without_claiming(tmp_path):
    clock, meta, store = world(tmp_path, round_policy={"policy": "deadline", "seconds": 30})
    first = min(u.received_at for u in meta.pending_updates("e"))
    outcome = RoundEngine(meta, store, clock=clock).run_round("e")
    assert outcome == RoundOutcome(
        "not_ready", "e", reason="the round policy is not met yet", wakeup_at=first + 30
    )
    assert meta.experiments_to_sweep(now=clock.now) == ["e"]  # no claim was left behind
    clock.now = first + 30
    assert RoundEngine(meta, store, clock=clock).run_round("e").status == "committed"
    assert meta.experiments_to_sweep(now=clock.now) == []


def test_the_sweep_lists_experiments_whose_worker_died_once_the_lease_expires(tmp_path):
    clock, meta, store = world(tmp_path)
    assert RoundEngine(meta, store, lease_seconds=10, clock=clock).claim("e") is not None  # then dies
    assert meta.experiments_to_sweep(now=clock.now) == []
    clock.now += 10
    assert meta.experiments_to_sweep(now=clock.now) == ["e"]
    assert meta.enrolled_clients("e") == frozenset({"a", "b"})


def test_peak_memory_sees_an_allocation_made_inside_it():
    with PeakMemory() as before:
        pass
    with PeakMemory() as peak:
        block = np.ones(64 * 1024 * 1024, dtype=np.uint8)
        block[::4096] = 2
        del block
    assert peak.bytes >= before.bytes
    assert peak.bytes > 32 * 1024 * 1024


def stored_files(root, folder: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / folder).rglob("*") if p.is_file())


def test_a_round_taken_over_from_a_dead_worker_removes_what_that_worker_left(tmp_path):
    clock, meta, store = world(tmp_path)
    dead = RoundEngine(meta, store, lease_seconds=10, shard_bytes=SPEC.nbytes // 3, clock=clock)
    plan = dead.start_round("e")
    dead.finish_shard(plan, 1)  # then SIGKILL: one shard's part and record, and the manifest are left behind
    assert len(stored_files(tmp_path, "shards")) == 2
    assert stored_files(tmp_path, ".uploads") != []
    clock.now += 10
    assert meta.experiments_to_sweep(now=clock.now) == ["e"]  # the sweep finds the round...
    survivor = RoundEngine(meta, store, lease_seconds=10, shard_bytes=SPEC.nbytes // 3, clock=clock)
    outcome = survivor.run_round("e")  # ...and the worker it sends takes it over
    assert outcome.status == "committed"
    assert stored_files(tmp_path, "shards") == stored_files(tmp_path, ".uploads") == []
    assert stored_files(tmp_path, "aggregates") == [outcome.aggregate.draft.weights_key]


def test_a_zombie_shard_finishing_after_the_commit_leaves_nothing(tmp_path):
    _, meta, store = world(tmp_path)
    engine = RoundEngine(meta, store, shard_bytes=SPEC.nbytes // 2)
    plan = engine.start_round("e")
    assert [engine.finish_shard(plan, i).status for i in range(len(plan.shards))] == [
        "shard_done",
        "committed",
    ]
    assert engine.finish_shard(plan, 0).status == "idle"  # a redelivered shard task
    assert stored_files(tmp_path, "shards") == stored_files(tmp_path, ".uploads") == []


class FailingStore(LocalDirectoryWeightStore):
    """Opening ``victim`` raises ``error`` from its ``fail_from``-th time on (the header check is the
    first), ``times`` times at most."""

    def __init__(self, root, victim: str, fail_from: int, error: Exception, times: int | None = None) -> None:
        super().__init__(root)
        self.victim, self.fail_from, self.error, self.times = victim, fail_from, error, times
        self.opened = self.failed = 0

    def open_weights(self, key, *, max_bytes=None):
        if key == self.victim:
            self.opened += 1
            if self.opened >= self.fail_from and (self.times is None or self.failed < self.times):
                self.failed += 1
                raise self.error
        return super().open_weights(key, max_bytes=max_bytes)


# the header check opens each update once; then a whole round opens it once, a round of two shards twice
FAILING_MID_ROUND = pytest.mark.parametrize(
    ("shard_bytes", "fail_from"), [(None, 2), (SPEC.nbytes // 2, 3)], ids=["whole", "sharded"]
)


@FAILING_MID_ROUND
def test_an_update_found_invalid_mid_round_is_quarantined_and_the_round_runs_again_without_it(
    tmp_path, shard_bytes, fail_from
):
    _, meta, _ = world(tmp_path)
    victim = meta.pending_updates("e")[0]
    error = InvalidWeights("file is truncated: it ended while being read")
    store = FailingStore(tmp_path, victim.weights_key, fail_from=fail_from, error=error)
    outcome = RoundEngine(meta, store, shard_bytes=shard_bytes).run_round("e")
    assert outcome.status == "committed"
    assert victim.update_id not in outcome.aggregate.draft.update_ids
    assert len(outcome.aggregate.draft.update_ids) == 4
    assert meta.update_status(victim.update_id)[0] == "quarantined"
    (failure,) = meta.failures("e")
    assert victim.update_id in failure
    assert stored_files(tmp_path, "shards") == stored_files(tmp_path, ".uploads") == []


@FAILING_MID_ROUND
@pytest.mark.parametrize(
    "error",
    [OSError(5, "Input/output error"), StoreUnavailable("S3 answered 503 SlowDown")],
    ids=["eio", "s3"],
)
def test_a_store_failing_mid_round_gives_the_round_back_and_loses_no_update(
    tmp_path, shard_bytes, fail_from, error
):
    _, meta, _ = world(tmp_path)
    updates = sorted(u.update_id for u in meta.pending_updates("e"))
    victim = meta.pending_updates("e")[0]
    store = FailingStore(tmp_path, victim.weights_key, fail_from=fail_from, error=error, times=1)
    engine = RoundEngine(meta, store, shard_bytes=shard_bytes)

    given_back = engine.run_round("e")
    assert given_back.status == "failed"
    assert given_back.quarantined == ()
    assert "the weight store is unavailable" in given_back.reason
    assert sorted(u.update_id for u in meta.pending_updates("e")) == updates
    assert meta.aggregates("e") == []
    (failure,) = meta.failures("e")
    assert "StoreUnavailable" in failure
    assert stored_files(tmp_path, "shards") == stored_files(tmp_path, ".uploads") == []

    again = engine.run_round("e")  # the sweep's next run, the store back
    assert again.status == "committed"
    assert sorted(again.aggregate.draft.update_ids) == updates
    assert [meta.update_status(u)[0] for u in updates] == ["consumed"] * len(updates)
    assert len(meta.aggregates("e")) == 1
    assert engine.run_round("e").status == "idle"


def test_a_store_failing_while_checking_headers_quarantines_nothing(tmp_path):
    _, meta, _ = world(tmp_path)
    updates = sorted(u.update_id for u in meta.pending_updates("e"))
    victim = meta.pending_updates("e")[-1]
    store = FailingStore(tmp_path, victim.weights_key, fail_from=1, error=TimeoutError("timed out"), times=1)
    engine = RoundEngine(meta, store)
    outcome = engine.run_round("e")
    assert (outcome.status, outcome.quarantined) == ("failed", ())
    assert sorted(u.update_id for u in meta.pending_updates("e")) == updates
    assert sorted(engine.run_round("e").aggregate.draft.update_ids) == updates


def test_two_shards_finishing_together_join_the_parts_once_and_commit_once(tmp_path):
    _, meta, store = world(tmp_path)
    engine = RoundEngine(meta, store, shard_bytes=SPEC.nbytes // 2)
    plan = engine.start_round("e")
    for index in range(2):  # both stored their part before either looked for the other's
        engine._store_shard(plan, index, engine._shard_data(plan, index), 0)
    with ThreadPoolExecutor(2) as pool:  # each finds the other done: both join and commit at once
        results = list(pool.map(lambda _: outcome_of(engine._combine, plan), range(2)))
    (record,) = [r for r in results if isinstance(r, AggregateRecord)]
    assert [type(r) for r in results if r is not record] in ([type(None)], [LeaseLost])  # the twin stops
    # a redelivered shard: the round is committed, nothing of it is touched
    assert engine.finish_shard(plan, 1).status == "idle"
    with store.open(record.draft.weights_key) as file:
        assert content_id(file.read()) == record.draft.content_id
    assert len(meta.aggregates("e")) == 1
    assert stored_files(tmp_path, "shards") == stored_files(tmp_path, ".uploads") == []


def outcome_of(call, *args):
    try:
        return call(*args)
    except LeaseLost as error:
        return error
