"""fma_core.update_stats: each update's norm, cosine and distance to the round's aggregate, taken in the
round's own pass: against numpy by hand, bit for bit the same sharded, and the outlier rule."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from fma_core.aggregators import create_aggregator
from fma_core.aggregators.base import Target
from fma_core.update_stats import CHUNK, Measure, block_elements, exact_add, flag_outliers
from fma_core.weights import TensorSpec

from .engine_world import World, random_weights

# sizes that are not whole chunks, one tensor of several chunks, and an integer tensor left out
SPEC = TensorSpec.from_json(
    [
        {"name": "a", "dtype": "F32", "shape": [37, 129]},
        {"name": "b", "dtype": "F32", "shape": [7]},
        {"name": "c", "dtype": "F32", "shape": [2100]},
        {"name": "n", "dtype": "I64", "shape": [3]},
    ]
)
FLOATING = [t.name for t in SPEC if t.numpy_dtype.kind == "f"]
ALGORITHMS = {
    "fedavg": {},
    "median": {},
    "trimmed_mean": {"trim_fraction": 0.2},
    "krum": {"f": 0, "m": 2},
    "bulyan": {"f": 0},
    "fedadam": {},
    "fedavgm": {},
}


def pushed(world: World, base_round: int, seed: int, scale: float = 0.1) -> str:
    """Train and push one update; its id."""
    before = {u.update_id for u in world.metadata.pending_updates("e")}
    world.train(base_round, seed, num_examples=10 + seed, scale=scale)
    (new,) = {u.update_id for u in world.metadata.pending_updates("e")} - before
    return new


def flat(weights: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(weights[name], np.float64).reshape(-1) for name in FLOATING])


def as_read(world: World, update_id: str, *, changes: bool) -> np.ndarray:
    """The update as the round reads it, computed here as the readers do (float32 arithmetic)."""
    record = world.metadata._updates[update_id].record
    sent = world.read(record.weights_key)
    base = world.read(record.base_weights_key)
    if changes:
        return flat(sent if record.delta else {n: sent[n] - base[n] for n in FLOATING})
    return flat({n: base[n] + sent[n] for n in FLOATING} if record.delta else sent)


@pytest.mark.parametrize("delta", [False, True], ids=["weights", "deltas"])
@pytest.mark.parametrize("aggregator", ALGORITHMS)
def test_the_figures_are_what_numpy_computes_by_hand_with_stale_bases(tmp_path, aggregator, delta):
    world = World(tmp_path, SPEC, aggregator=aggregator, params=ALGORITHMS[aggregator], delta=delta)
    for seed in range(4):
        pushed(world, 0, seed)
    world.run()
    ids = [pushed(world, 1, 10 + seed) for seed in range(3)] + [pushed(world, 0, 20)]  # one stale
    world.run()
    record = world.metadata.aggregates("e")[1]
    section = record.draft.report["updates"]
    changes = create_aggregator(aggregator, ALGORITHMS[aggregator]).reads_changes
    parent = flat(world.model(1))
    aggregate = flat(world.model(2)) - (parent if changes else 0)
    reference = 0 if changes else parent
    assert section["measured_from"] == ("changes" if changes else "current model")
    assert section["aggregate_norm"] == pytest.approx(np.linalg.norm(aggregate - reference), rel=1e-6)
    assert sorted(section["per_update"]) == sorted(ids)
    shares = dict(zip(record.draft.update_ids, record.draft.input_weights or [], strict=False))
    for update_id in ids:
        u = as_read(world, update_id, changes=changes)
        figures = section["per_update"][update_id]
        step, towards = u - reference, aggregate - reference
        assert figures["norm"] == pytest.approx(np.linalg.norm(step), rel=1e-6)
        cosine = step @ towards / (np.linalg.norm(step) * np.linalg.norm(towards))
        assert figures["cosine"] == pytest.approx(cosine, rel=1e-6, abs=1e-6)
        assert figures["distance"] == pytest.approx(np.linalg.norm(u - aggregate), rel=1e-6)
        assert figures.get("share") == shares.get(update_id)
        assert figures["outlier"] in (True, False)


@pytest.mark.parametrize("aggregator", ALGORITHMS)
def test_a_sharded_round_reports_the_same_figures_bit_for_bit(tmp_path, aggregator):
    reports = []
    for name, shard_bytes in (("whole", None), ("sharded", 3 * CHUNK * 4)):
        world = World(tmp_path / name, SPEC, aggregator=aggregator, params=ALGORITHMS[aggregator], delta=True)
        for seed in range(5):
            pushed(world, 0, seed)
        engine = world.engine(shard_bytes=shard_bytes)
        if shard_bytes:
            plan = engine.start_round("e")
            assert len(plan.shards) >= 3
            for index in range(len(plan.shards)):
                outcome = engine.finish_shard(plan, index)
        else:
            outcome = engine.run_round("e")
        assert outcome.status == "committed", outcome.reason
        reports.append(outcome.aggregate.draft.report["updates"])
    whole, sharded = reports
    assert sharded == whole  # every float equal, not close
    assert all(f["distance"] is not None for f in whole["per_update"].values())


def test_no_block_size_or_thread_count_changes_a_bit(tmp_path):
    world = World(tmp_path, SPEC, aggregator="fedavg")
    updates = []
    for seed in range(6):
        pushed(world, 0, seed)
    engine = world.engine()
    updates = engine._inputs(engine.plan_shards(engine.claim("e")))

    def measured(block: int, threads: int) -> dict:
        aggregator = create_aggregator("fedavg", threads=threads)
        aggregator.block_elements = block
        out = {t.name: np.empty(t.size, t.numpy_dtype) for t in SPEC}
        measure = Measure()
        aggregator.aggregate_into(updates, [Target(t, 0, t.size, out[t.name]) for t in SPEC], None, measure)
        sums = measure.sums()
        return {"updates": sums.updates, "aggregate": sums.aggregate}

    first = measured(1 << 18, 1)
    assert measured(CHUNK, 2) == first
    assert measured(3 * CHUNK, 3) == first


def test_two_of_ten_clients_pushing_noise_are_flagged_and_no_one_else(tmp_path):
    for aggregator in ("fedavg", "median"):
        world = World(tmp_path / aggregator, SPEC, aggregator=aggregator)
        honest = [pushed(world, 0, seed) for seed in range(8)]
        noisy = [pushed(world, 0, 100 + seed, scale=3.0) for seed in range(2)]
        world.run()
        section = world.metadata.aggregates("e")[0].draft.report["updates"]
        flagged = sorted(u for u, f in section["per_update"].items() if f["outlier"])
        assert flagged == sorted(noisy), aggregator
        rule = section["outlier_rule"]
        assert rule["threshold"] < min(section["per_update"][u]["distance"] for u in noisy)
        assert rule["threshold"] > max(section["per_update"][u]["distance"] for u in honest)


def test_the_outlier_rule_on_its_own():
    figures = {str(i): {"distance": d} for i, d in enumerate([1.0, 1.1, 0.9, 1.05, 0.95, 9.0])}
    rule = flag_outliers(figures)
    assert [u for u, f in figures.items() if f["outlier"]] == ["5"]
    assert rule["median"] == pytest.approx(1.025)
    same = {str(i): {"distance": 2.0} for i in range(5)}
    flag_outliers(same)
    assert not any(f["outlier"] for f in same.values())  # no spread: rounding alone never flags
    few = {"a": {"distance": 1.0}, "b": {"distance": 100.0}}
    assert flag_outliers(few)["threshold"] is None
    assert not any(f["outlier"] for f in few.values())
    broken = {"a": {"distance": None}, "b": {"distance": 1.0}, "c": {"distance": 1.0}, "d": {"distance": 1.0}}
    flag_outliers(broken)
    assert broken["a"]["outlier"]
    assert not broken["b"]["outlier"]


def test_exact_sums_do_not_depend_on_grouping_or_order():
    rng = random.Random(3)
    values = [rng.uniform(-1, 1) * 10.0 ** rng.randint(-30, 30) for _ in range(3000)]
    totals = set()
    for _ in range(5):
        rng.shuffle(values)
        cuts = sorted(rng.sample(range(1, len(values)), 7))
        parts = [values[a:b] for a, b in zip([0, *cuts], [*cuts, len(values)], strict=True)]
        expansion: list[float] | None = []
        for part in parts:
            expansion = exact_add(expansion, exact_add([], part))
        totals.add(math.fsum(expansion))
    assert totals == {math.fsum(values)}
    assert exact_add([1.0], [math.inf]) is None
    assert exact_add(None, [1.0]) is None


def test_the_measuring_block_bounds_the_buffer_and_keeps_to_whole_chunks():
    for count in (1, 3, 10, 100, 10_000):
        block = block_elements(1 << 18, count)
        assert block % CHUNK == 0
        assert block * count <= max(1 << 20, CHUNK * count)
    assert random_weights(SPEC, 1)["n"].dtype == np.int64


def test_without_a_current_model_only_the_distance_is_measured(tmp_path):
    world = World(tmp_path, SPEC, aggregator="fedavg", initial=False)
    ids = [pushed(world, 0, seed) for seed in range(3)]
    world.run()
    section = world.metadata.aggregates("e")[0].draft.report["updates"]
    aggregate = flat(world.model(1))
    assert section["measured_from"] is None
    assert section["aggregate_norm"] is None
    for update_id in ids:
        figures = section["per_update"][update_id]
        assert figures["norm"] is None
        assert figures["cosine"] is None
        u = flat(world.read(world.metadata._updates[update_id].record.weights_key))
        assert figures["distance"] == pytest.approx(np.linalg.norm(u - aggregate), rel=1e-6)
