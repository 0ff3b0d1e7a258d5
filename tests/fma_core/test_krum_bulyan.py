"""Krum, Multi-Krum and Bulyan: against a plain numpy re-statement of the papers and against Flower's
functions, on small inputs; deterministic selections; sharded rounds bit-identical to whole ones; the
limits N ≥ 2f + 3 and N ≥ 4f + 3 refused, and waited for by the round engine."""

from __future__ import annotations

import io
import warnings
from typing import Any, ClassVar

import numpy as np
import pytest

from fma_core.aggregators import UpdateInput, canonical_order, create_aggregator
from fma_core.aggregators.base import RoundContext
from fma_core.aggregators.distances import squared_distances
from fma_core.errors import ConfigurationError, TooFewUpdates
from fma_core.weights import ArrayReader, TensorSpec, to_bytes

from .engine_world import World, random_weights

SHAPES = {"w": (6, 7), "b": (5,), "big": (3000,)}


def models(count: int, *, seed: int, outliers: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` float32 models near one another; the first ``outliers`` of them far away."""
    rng = np.random.default_rng(seed)
    centre = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    found = []
    for i in range(count):
        shift = 50.0 if i < outliers else 0.0
        found.append(
            {
                k: (c + shift + 0.1 * rng.standard_normal(c.shape)).astype(np.float32)
                for k, c in centre.items()
            }
        )
    return found


def inputs(weights: list[dict[str, np.ndarray]], examples: list[int] | None = None) -> list[UpdateInput]:
    """Content ids in list order, so the canonical order is the list's."""
    examples = examples or [10 + i for i in range(len(weights))]
    return [
        UpdateInput(f"u{i}", f"{i:064x}", n, lambda w=w: ArrayReader(w))
        for i, (w, n) in enumerate(zip(weights, examples, strict=True))
    ]


def run(name: str, params: dict, updates: list[UpdateInput]) -> tuple[dict[str, np.ndarray], dict]:
    """prepare, then aggregate, as a round does."""
    aggregator = create_aggregator(name, params)
    spec = TensorSpec.from_reader(updates[0].open())
    updates = canonical_order(updates)  # as the round engine hands them to prepare
    prepared = aggregator.prepare(updates, spec, RoundContext())
    return aggregator.aggregate(updates, spec, RoundContext(prepared=prepared)), prepared


# A plain numpy re-statement of the papers, in float64, every distance computed directly.


def flat(weights: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([weights[k].astype(np.float64).ravel() for k in SHAPES])


def unflat(vector: np.ndarray) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for k, shape in SHAPES.items():
        size = int(np.prod(shape))
        out[k] = vector[at : at + size].reshape(shape)
        at += size
    return out


def paper_scores(vectors: list[np.ndarray], f: int) -> list[float]:
    """Blanchard et al.: s(i) = Σ ‖Vᵢ − Vⱼ‖² over the n − f − 2 closest j ≠ i (at least one)."""
    n = len(vectors)
    scores = []
    for i in range(n):
        others = sorted(float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(others[: max(1, n - f - 2)]))
    return scores


def paper_multi_krum(vectors: list[np.ndarray], f: int, m: int) -> tuple[list[int], np.ndarray]:
    scores = paper_scores(vectors, f)
    chosen = sorted(range(len(vectors)), key=lambda i: (scores[i], i))[:m]
    return chosen, sum(vectors[i] for i in chosen) / m


def paper_bulyan(vectors: list[np.ndarray], f: int) -> tuple[list[int], np.ndarray]:
    """El Mhamdi et al.: θ = n − 2f chosen by Krum one at a time, then per coordinate the mean of the
    β = θ − 2f chosen values closest to their median (a tie in score to the earlier update, in distance
    to the lower value)."""
    remaining, chosen = list(range(len(vectors))), []
    for _ in range(len(vectors) - 2 * f):
        scores = paper_scores([vectors[i] for i in remaining], f)
        pick = min(range(len(remaining)), key=lambda j: (scores[j], j))
        chosen.append(remaining.pop(pick))
    stack = np.stack([vectors[i] for i in sorted(chosen)])
    beta = len(chosen) - 2 * f
    median = np.median(stack, axis=0)
    result = np.empty(stack.shape[1])
    for c in range(stack.shape[1]):
        nearest = sorted(range(len(stack)), key=lambda r: (abs(stack[r, c] - median[c]), stack[r, c]))[:beta]
        result[c] = stack[nearest, c].mean()
    return chosen, result


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for k in SHAPES:
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_distances_are_the_direct_float64_ones_even_beside_a_huge_outlier():
    weights = models(9, seed=1)
    weights[0] = {k: v + np.float32(1e6) for k, v in weights[0].items()}  # first in canonical order
    vectors = [flat(w) for w in weights]
    want = np.array([[np.sum((a - b) ** 2) for b in vectors] for a in vectors])
    got = squared_distances(inputs(weights), TensorSpec.from_weights(weights[0]))
    np.testing.assert_allclose(got[1:, 1:], want[1:, 1:], rtol=1e-9)  # the honest ones, to 1e-9
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert (got == got.T).all()
    assert (np.diag(got) == 0).all()


@pytest.mark.parametrize(("count", "f", "m"), [(7, 2, 1), (9, 2, 1), (9, 2, 4), (12, 3, 6), (5, 0, 5)])
def test_krum_and_multi_krum_match_the_paper(count, f, m):
    weights = models(count, seed=count + f + m, outliers=f)
    result, prepared = run("krum", {"f": f, "m": m}, inputs(weights))
    chosen, want = paper_multi_krum([flat(w) for w in weights], f, m)
    assert prepared["selected"] == [f"u{i}" for i in chosen]
    assert not {f"u{i}" for i in range(f)} & set(prepared["selected"])  # no outlier chosen
    np.testing.assert_allclose(
        [prepared["scores"][f"u{i}"] for i in range(count)],
        paper_scores([flat(w) for w in weights], f),
        rtol=1e-9,
    )
    assert_close(result, unflat(want))
    if m == 1:  # Krum returns the chosen update itself, bit for bit
        for k in SHAPES:
            assert result[k].tobytes() == weights[chosen[0]][k].tobytes()


@pytest.mark.parametrize(("count", "f"), [(7, 1), (11, 2), (15, 3), (4, 0)])
def test_bulyan_matches_the_paper(count, f):
    weights = models(count, seed=100 + count, outliers=f)
    result, prepared = run("bulyan", {"f": f}, inputs(weights))
    chosen, want = paper_bulyan([flat(w) for w in weights], f)
    assert prepared["selected"] == [f"u{i}" for i in chosen]
    assert (prepared["theta"], prepared["beta"]) == (count - 2 * f, count - 4 * f)
    assert_close(result, unflat(want))


def flower() -> Any:
    """Flower 1.42's ``flwr.server.strategy.aggregate`` (importing it trips a deprecation in click)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from flwr.server.strategy import aggregate
    return aggregate


def flower_results(weights, examples):
    return [([w[k] for k in SHAPES], n) for w, n in zip(weights, examples, strict=True)]


@pytest.mark.parametrize(("count", "f", "m"), [(7, 2, 1), (10, 2, 1), (10, 2, 5), (13, 3, 4)])
def test_krum_matches_flower_whose_multi_krum_weighs_by_examples(count, f, m):
    """Flower's ``aggregate_krum`` has the same scores; its Multi-Krum is the example-weighted mean of the
    selected (our ``weighted: true``; the paper's, our default, is the plain mean); its distances are
    float32 and it does not check N ≥ 2f + 3."""
    weights = models(count, seed=7 * count + m, outliers=f)
    examples = [int(n) for n in np.random.default_rng(count).integers(1, 1000, count)]
    flower_krum = flower().aggregate_krum(
        flower_results(weights, examples), num_malicious=f, to_keep=0 if m == 1 else m
    )
    ours, _ = run("krum", {"f": f, "m": m, "weighted": True}, inputs(weights, examples))
    assert_close(ours, dict(zip(SHAPES, flower_krum, strict=True)))
    if m > 1:  # unweighted (the paper's) differs from Flower's as soon as the examples differ
        plain, _ = run("krum", {"f": f, "m": m}, inputs(weights, examples))
        assert not np.allclose(plain["big"], flower_krum[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("count", "f"), [(7, 1), (11, 2), (16, 3)])
def test_bulyan_matches_flower(count, f):
    """Flower's ``aggregate_bulyan`` with Krum: the same iterated selection (at least one neighbour when
    fewer than f + 3 are left) and the same coordinate-wise step; it recomputes every distance at each
    of the θ selections, and breaks ties in distance to the median by ``argpartition``, not by order."""
    weights = models(count, seed=3 * count, outliers=f)
    examples = list(range(1, count + 1))
    functions = flower()
    theirs = functions.aggregate_bulyan(
        flower_results(weights, examples), f, functions.aggregate_krum, to_keep=0
    )
    ours, _ = run("bulyan", {"f": f}, inputs(weights, examples))
    assert_close(ours, dict(zip(SHAPES, theirs, strict=True)))


@pytest.mark.parametrize(
    ("name", "params"), [("krum", {"f": 1}), ("krum", {"f": 1, "m": 3}), ("bulyan", {"f": 1})]
)
def test_ties_go_to_the_canonical_order_and_input_order_changes_no_bit(name, params):
    weights = models(8, seed=5)
    weights[5] = weights[2]  # identical updates tie on every score
    updates = inputs(weights)
    result, prepared = run(name, params, updates)
    assert prepared["scores"]["u2"] == prepared["scores"]["u5"]
    selected = prepared["selected"]
    assert "u5" not in selected or "u2" in selected[: selected.index("u5")]
    for order in ([7, 6, 5, 4, 3, 2, 1, 0], [3, 1, 4, 0, 5, 2, 7, 6]):
        again, prepared_again = run(name, params, [updates[i] for i in order])
        assert prepared_again == prepared
        for k in SHAPES:
            assert again[k].tobytes() == result[k].tobytes()


class CountingReader(ArrayReader):
    """Counts the blocks read of each update."""

    reads: ClassVar[list[str]] = []

    def __init__(self, weights: dict[str, np.ndarray], update_id: str) -> None:
        super().__init__(weights)
        self.update_id = update_id

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        CountingReader.reads.append(self.update_id)
        return super().read_block(name, start, stop, buffer)


def test_the_selection_and_shares_reach_the_lineage_and_unselected_updates_are_not_read_again():
    weights = models(7, seed=9, outliers=2)
    updates = [
        UpdateInput(f"u{i}", f"{i:064x}", 1, lambda w=w, i=i: CountingReader(w, f"u{i}"))
        for i, w in enumerate(weights)
    ]
    aggregator = create_aggregator("krum", {"f": 2, "m": 2})
    spec = TensorSpec.from_weights(weights[0])
    CountingReader.reads.clear()
    context = RoundContext(prepared=aggregator.prepare(updates, spec, RoundContext()))
    assert sorted(set(CountingReader.reads)) == [u.update_id for u in updates]  # the prepare pass reads all
    shares = aggregator.round_shares(updates, context)
    assert sorted(shares) == [0.0] * 5 + [0.5, 0.5]
    assert [f"u{i}" for i, s in enumerate(shares) if s] == sorted(context.prepared["selected"])
    assert aggregator.report(updates, context) == context.prepared
    CountingReader.reads.clear()
    aggregator.aggregate(updates, spec, context)
    assert set(CountingReader.reads) == set(context.prepared["selected"])


@pytest.mark.parametrize(
    ("name", "params", "count", "message"),
    [
        ("krum", {"f": 2}, 6, r"'krum' with f = 2 needs at least 7 updates a round \(2f \+ 3 = 7.*has 6"),
        ("krum", {"f": 1, "m": 6}, 5, "needs at least 6 updates a round .*m = 6.*has 5"),
        ("bulyan", {"f": 1}, 6, r"'bulyan' with f = 1 needs at least 7 updates a round \(4f \+ 3\).*has 6"),
        ("bulyan", {"f": 2}, 10, "needs at least 11"),
    ],
)
def test_a_round_below_the_limit_is_refused_clearly(name, params, count, message):
    weights = models(count, seed=2)
    aggregator = create_aggregator(name, params)
    with pytest.raises(TooFewUpdates, match=message) as error:
        aggregator.prepare(inputs(weights), TensorSpec.from_weights(weights[0]), RoundContext())
    assert (error.value.needed, error.value.available) == (aggregator.min_updates(), count)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("krum", {}, "missing parameter.*f for aggregator 'krum'"),
        ("bulyan", {"m": 2, "f": 1}, "unknown parameter.*m for aggregator 'bulyan'"),
        ("krum", {"f": -1}, "f must be at least 0"),
        ("krum", {"f": 1, "m": 0}, "m must be at least 1"),
        ("krum", {"f": 1.5}, "'f' for aggregator 'krum' must be a int"),
        ("bulyan", {"f": -2}, "f must be at least 0"),
    ],
)
def test_parameters_are_checked(name, params, message):
    with pytest.raises(ConfigurationError, match=message):
        create_aggregator(name, params)


# Through the round engine

SPEC = TensorSpec.from_json(
    [{"name": "w", "dtype": "F32", "shape": [64, 80]}, {"name": "b", "dtype": "F32", "shape": [80]}]
)


def push(world: World, count: int, *, outliers: int = 0) -> None:
    for i in range(count):
        world.train(0, seed=i, num_examples=i + 1)
    for i in range(outliers):  # far from the others
        bad = {k: v + np.float32(100) for k, v in random_weights(SPEC, 1000 + i).items()}
        world.count += 1
        stored = world.weights.put(f"updates/bad{i}.safetensors", io.BytesIO(to_bytes(bad)))
        world.metadata.add_update(
            "e", client_id="c0", weights_key=stored.key, content_id=stored.sha256, num_examples=10_000
        )


@pytest.mark.parametrize(("name", "params"), [("krum", {"f": 1, "m": 3}), ("bulyan", {"f": 1})])
def test_sharded_rounds_are_bit_identical_and_the_lineage_names_the_selection(tmp_path, name, params):
    drafts = []
    for shard_bytes in (None, SPEC.nbytes // 3):
        world = World(tmp_path / str(shard_bytes), SPEC, aggregator=name, params=params)
        push(world, 6, outliers=1)
        outcome = world.engine(shard_bytes=shard_bytes).run_round("e")
        assert outcome.status == "committed", outcome.reason
        drafts.append(outcome.aggregate.draft)
    whole, sharded = drafts
    assert whole.content_id == sharded.content_id
    report = whole.report["aggregator"]
    assert report == sharded.report["aggregator"]
    assert set(report["scores"]) == set(whole.update_ids)
    bad = max(report["scores"], key=report["scores"].get)  # the outlier scores worst and is left out
    assert bad not in report["selected"]
    if name == "krum":
        shares = dict(zip(whole.update_ids, whole.input_weights, strict=True))
        assert {u for u, s in shares.items() if s} == set(report["selected"])


def test_the_engine_waits_for_the_updates_the_algorithm_needs(tmp_path):
    world = World(tmp_path, SPEC, aggregator="krum", params={"f": 1})
    push(world, 4)
    outcome = world.engine().run_round("e")
    assert outcome.status == "not_ready"
    assert "'krum' needs at least 5 updates a round; 4 pending" in outcome.reason
    assert len(world.metadata.pending_updates("e")) == 4  # nothing consumed, nothing quarantined
    push(world, 1)
    assert world.engine().run_round("e").status == "committed"


def test_a_quarantine_that_leaves_too_few_makes_the_round_wait_not_fail(tmp_path):
    world = World(tmp_path, SPEC, aggregator="bulyan", params={"f": 1})
    push(world, 7)
    broken = world.metadata.pending_updates("e")[0]
    world.weights.delete(broken.weights_key)
    outcome = world.engine().run_round("e")
    assert outcome.status == "not_ready"
    assert "needs at least 7 updates a round" in outcome.reason
    assert "has 6" in outcome.reason
    assert len(world.metadata.pending_updates("e")) == 6  # the broken one quarantined, the rest kept
    assert world.metadata.aggregates("e") == []


@pytest.mark.parametrize("params", [{"f": 1}, {"f": 1, "m": 3}])
def test_deltas_are_selected_and_aggregated_as_the_weights_they_make(tmp_path, params):
    """A delta reads as its base plus itself: the same models, so the same selection and result. (Not
    so for Bulyan in general: its last selections score each update by its one nearest neighbour, two
    mutual nearest neighbours tie exactly, and the tie goes to the first in canonical order, by
    content, which differs between a delta and its weights.)"""
    rounds = []
    for delta in (False, True):
        world = World(tmp_path / str(delta), SPEC, aggregator="krum", params=params, delta=delta)
        push(world, 7)
        outcome = world.engine().run_round("e")
        assert outcome.status == "committed", outcome.reason
        rounds.append((outcome.aggregate.draft, world.read(outcome.aggregate.draft.weights_key)))
    (weights, as_weights), (deltas, as_deltas) = rounds
    assert weights.report["aggregator"]["selected"] == deltas.report["aggregator"]["selected"]
    for k in as_weights:
        np.testing.assert_allclose(as_deltas[k], as_weights[k], rtol=1e-6, atol=1e-6)


def test_bulyans_tie_in_distance_to_the_median_goes_to_the_lower_value_whatever_the_order():
    """θ = 6 values (f = 1, β = 4), median 3.5: 1 and 6 are both 2.5 away, the fourth nearest either way."""
    bulyan = create_aggregator("bulyan", {"f": 1})
    for order in ([1, 2, 3, 4, 6, 100], [100, 6, 4, 3, 2, 1], [6, 1, 100, 3, 4, 2]):
        column = np.array(order, np.float32)[:, None]
        out = np.empty(1, np.float32)
        bulyan.reduce(column.copy(), out)
        assert out[0] == np.float32((1 + 2 + 3 + 4) / 4)


@pytest.mark.parametrize("name", ["krum", "bulyan"])
def test_memory_is_one_model_and_a_few_blocks_whatever_the_number_of_updates(name):
    """The prepare pass keeps N² scalars and one block of every update (~4 MiB); Bulyan's step θ × block
    per thread (~4 MiB each, as the median's): never N models."""
    import tracemalloc

    model = {"w": np.zeros(4_000_000, np.float32), "b": np.zeros(10, np.float32)}  # 16 MB
    updates = [UpdateInput(f"u{i}", f"{i:064x}", 1, lambda: ArrayReader(model)) for i in range(64)]
    spec = TensorSpec.from_weights(model)
    aggregator = create_aggregator(name, {"f": 2}, threads=2)
    tracemalloc.start()
    prepared = aggregator.prepare(updates, spec, RoundContext())
    aggregator.aggregate(updates, spec, RoundContext(prepared=prepared))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16_000_000 + 6 * (4 << 20)  # the result, and a handful of 4 MiB stacks; 64 models: 1 GB
