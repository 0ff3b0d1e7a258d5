"""fma_core.aggregators: results against numpy references, determinism, memory, parameters, plugins."""

from __future__ import annotations

import itertools
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from fma_core.aggregators import (
    Aggregator,
    UpdateInput,
    aggregator_class,
    available,
    canonical_order,
    create_aggregator,
    registry,
)
from fma_core.errors import (
    ConfigurationError,
    InvalidWeights,
    ObjectNotFound,
    StoreUnavailable,
    UnknownAggregator,
    UpdateUnreadable,
)
from fma_core.shards import aggregate_shard, balance_shards
from fma_core.weights import ArrayReader, TensorSpec, open_weights, to_bytes

from .float_reference import fma_float32


def make_updates(count: int, *, seed: int = 0, dtype=np.float32, sizes=((7, 5), (3,), (40_000,))):
    rng = np.random.default_rng(seed)
    updates = []
    for i in range(count):
        weights = {
            f"t{j}": (rng.standard_normal(shape) * 3 + 1).astype(dtype) for j, shape in enumerate(sizes)
        }
        updates.append(
            UpdateInput(
                f"u{i}",
                f"{rng.integers(1 << 62):016x}",
                int(rng.integers(1, 500)),
                lambda w=weights: ArrayReader(w),
            )
        )
    return updates


def arrays(update: UpdateInput) -> dict[str, np.ndarray]:
    return update.open().to_weights()


def spec_of(updates) -> TensorSpec:
    return TensorSpec.from_reader(updates[0].open())


def reference(updates, shares) -> dict[str, np.ndarray]:
    names = arrays(updates[0])
    return {
        name: sum(s * arrays(u)[name].astype(np.float64) for u, s in zip(updates, shares, strict=True))
        for name in names
    }


def relative_error(got: dict, want: dict) -> float:
    return max(np.linalg.norm(got[n].astype(np.float64) - want[n]) / np.linalg.norm(want[n]) for n in want)


def test_fedavg_weights_by_examples_within_1e6_of_float64():
    updates = make_updates(30)
    result = create_aggregator("fedavg").aggregate(updates, spec_of(updates))
    counts = np.array([u.num_examples for u in updates], dtype=np.float64)
    want = reference(updates, counts / counts.sum())
    assert all(result[n].dtype == np.float32 for n in result)
    assert relative_error(result, want) < 1e-6
    for name in want:  # elementwise too, relative to the tensor's scale
        scale = np.abs(want[name]).max()
        np.testing.assert_allclose(result[name], want[name], rtol=1e-6, atol=1e-6 * scale)


def test_fedavg_unweighted_and_mean_and_original_names_agree():
    updates = make_updates(9)
    spec = spec_of(updates)
    want = reference(updates, [1 / 9] * 9)
    results = [
        create_aggregator("fedavg", {"weighted": False}).aggregate(updates, spec),
        create_aggregator("mean").aggregate(updates, spec),
        create_aggregator("avg_values_if_data").aggregate(updates, spec),
        create_aggregator("average_layers").aggregate(updates, spec),
    ]
    for result in results:
        assert relative_error(result, want) < 1e-6
    for a, b in itertools.pairwise(results):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_input_weights_are_the_shares_in_canonical_order():
    updates = make_updates(4)
    shares = create_aggregator("fedavg").input_weights(updates)
    ordered = sorted(updates, key=lambda u: u.content_id)
    total = sum(u.num_examples for u in updates)
    assert shares == pytest.approx([u.num_examples / total for u in ordered])
    assert create_aggregator("median").input_weights(updates) is None


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
def test_robust_aggregators_match_numpy_and_resist_a_bad_minority(name):
    honest = make_updates(8, seed=1)
    poisoned = [
        UpdateInput(
            f"bad{i}",
            f"ff{i}",
            10_000,
            lambda: ArrayReader({k: np.full_like(v, 1e6) for k, v in arrays(honest[0]).items()}),
        )
        for i in range(2)
    ]
    updates = honest + poisoned
    params = {"trim_fraction": 0.2} if name == "trimmed_mean" else None
    result = create_aggregator(name, params).aggregate(updates, spec_of(updates))
    for tensor in result:
        stack = np.stack([arrays(u)[tensor] for u in updates])
        want = np.median(stack, axis=0) if name == "median" else np.sort(stack, axis=0)[2:8].mean(axis=0)
        np.testing.assert_allclose(result[tensor], want, rtol=1e-6, atol=1e-6)
        assert np.abs(result[tensor]).max() < 100  # the 1e6 outliers did not get through
    fedavg = create_aggregator("fedavg").aggregate(updates, spec_of(updates))
    assert np.abs(fedavg["t0"]).max() > 1e5  # whereas FedAvg is dragged away


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("name", ["fedavg", "mean", "median", "trimmed_mean"])
def test_same_updates_in_any_order_any_threads_any_blocks_give_identical_bits(name, dtype):
    updates = make_updates(7, seed=3, dtype=dtype)
    spec = spec_of(updates)
    baseline = create_aggregator(name, threads=1).aggregate(updates, spec)
    rng = np.random.default_rng(0)
    for threads, block in [(2, 1 << 17), (3, 1000), (1, 4096)]:
        aggregator = create_aggregator(name, threads=threads)
        aggregator.block_elements = block
        shuffled = [updates[i] for i in rng.permutation(len(updates))]
        result = aggregator.aggregate(shuffled, spec)
        for tensor in baseline:
            assert result[tensor].tobytes() == baseline[tensor].tobytes()
        # and cut into shards whose ranges start and end inside tensors, joined
        shards = balance_shards(spec, spec.nbytes // 3)
        joined = b"".join(
            aggregate_shard(aggregator, shuffled, spec, shard).data.tobytes() for shard in shards
        )
        assert joined == b"".join(baseline[info.name].tobytes() for info in spec), (threads, block)


def linear_reference(updates, shares) -> dict[str, np.ndarray]:
    """Σ sᵢ·xᵢ as ``weighted_sum`` defines it for float32, element by element: x₀·s₀, then
    fma(sᵢ, xᵢ, acc) in canonical order, rounded once to float32 per update (or, all shares equal,
    the sum, each addition rounded, scaled once)."""
    ordered = canonical_order(updates)
    values = [arrays(u) for u in ordered]
    equal = len(set(shares)) == 1
    result = {}
    for name in values[0]:
        if equal:
            acc = values[0][name].astype(np.float32)
            for value in values[1:]:
                acc = acc + value[name]
            result[name] = acc * np.float32(shares[0])
        else:
            acc = values[0][name] * np.float32(shares[0])
            for value, share in zip(values[1:], shares[1:], strict=True):
                acc = fma_float32(np.float32(share), value[name], acc)
            result[name] = acc
    return result


@pytest.mark.parametrize(
    ("name", "params"), [("fedavg", None), ("fedavg", {"weighted": False}), ("mean", None)]
)
def test_linear_results_are_the_defined_float32_arithmetic_for_1_2_3_threads_any_block_memory_or_files(
    name, params
):
    updates = make_updates(6, seed=9, sizes=((7, 5), (3,), (70_001,), (2_048,)))
    files = [
        UpdateInput(u.update_id, u.content_id, u.num_examples, lambda u=u: open_weights(to_bytes(arrays(u))))
        for u in updates
    ]
    spec = spec_of(updates)
    shares = create_aggregator(name, params).input_weights(updates)
    want = linear_reference(updates, shares)
    for threads, block, inputs in itertools.product(
        (1, 2, 3), (1000, 4096, 1 << 16, 1 << 18), (updates, files)
    ):
        aggregator = create_aggregator(name, params, threads=threads)
        aggregator.block_elements = block
        result = aggregator.aggregate(inputs, spec)
        for tensor in want:
            assert result[tensor].tobytes() == want[tensor].tobytes(), (threads, block, tensor)
        # and cut into shards (ranges through tensors, as a sharded round computes them), joined
        shards = balance_shards(spec, spec.nbytes // 3)
        assert len(shards) >= 3
        joined = b"".join(aggregate_shard(aggregator, inputs, spec, shard).data.tobytes() for shard in shards)
        assert joined == b"".join(want[info.name].tobytes() for info in spec), (threads, block)


@pytest.mark.parametrize("name", ["fedavg", "median"])
def test_a_shard_of_tensors_is_bit_identical_to_the_same_tensors_of_the_whole(name):
    updates = make_updates(5, seed=4)
    spec = spec_of(updates)
    whole = create_aggregator(name).aggregate(updates, spec)
    for shard in (["t0"], ["t1", "t2"]):
        part = create_aggregator(name).aggregate(updates, spec.subset(shard))
        assert list(part) == shard
        for tensor in shard:
            assert part[tensor].tobytes() == whole[tensor].tobytes()


def test_integer_and_half_precision_tensors_keep_their_dtype():
    rng = np.random.default_rng(5)
    updates = [
        UpdateInput(
            f"u{i}",
            f"{i}",
            i + 1,
            lambda i=i: ArrayReader(
                {"steps": np.array(10 * (i + 1), np.int64), "h": rng.standard_normal(50).astype(np.float16)}
            ),
        )
        for i in range(3)
    ]
    result = create_aggregator("fedavg").aggregate(updates, spec_of(updates))
    assert result["steps"].dtype == np.int64
    assert result["steps"].shape == ()
    assert result["steps"] == round((10 * 1 + 20 * 2 + 30 * 3) / 6)
    assert result["h"].dtype == np.float16


def test_reading_from_safetensors_bytes_gives_the_same_result_as_arrays():
    updates = make_updates(4, seed=6)
    as_files = [
        UpdateInput(u.update_id, u.content_id, u.num_examples, lambda u=u: open_weights(to_bytes(arrays(u))))
        for u in updates
    ]
    spec = spec_of(updates)
    a = create_aggregator("fedavg").aggregate(updates, spec)
    b = create_aggregator("fedavg").aggregate(as_files, spec)
    for tensor in a:
        assert a[tensor].tobytes() == b[tensor].tobytes()


@pytest.mark.parametrize(("name", "count"), [("fedavg", 8), ("fedavg", 64), ("median", 64)])
def test_peak_extra_memory_is_one_model_plus_small_blocks_whatever_the_number_of_updates(name, count):
    model = {"w": np.zeros(4_000_000, np.float32), "b": np.zeros(10, np.float32)}  # 16 MB
    updates = [UpdateInput(f"u{i}", f"{i}", i + 1, lambda: ArrayReader(model)) for i in range(count)]
    aggregator = create_aggregator(name, threads=2)
    tracemalloc.start()
    aggregator.aggregate(updates, TensorSpec.from_weights(model))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # median keeps the N updates' values of one block per thread: about 4 MiB each, by design
    stacks = 2 * 2 * (1 << 20) * 4 if name == "median" else 0
    assert peak < 1.5 * 16_000_000 + stacks


@pytest.mark.parametrize(
    "failure", [InvalidWeights("header is not valid JSON"), ObjectNotFound("no weights stored under 'x'")]
)
def test_an_update_at_fault_is_named_unreadable(failure):
    updates = make_updates(3)

    def broken():
        raise failure

    updates.append(UpdateInput("bad", "00", 1, broken))
    with pytest.raises(UpdateUnreadable) as error:
        create_aggregator("fedavg").aggregate(updates, spec_of(updates))
    assert error.value.update_id == "bad"


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), StoreUnavailable("S3 answered 503")])
@pytest.mark.parametrize("when", ["opening", "reading"])
def test_a_store_failure_is_the_stores_not_the_updates(failure, when):
    updates = make_updates(3)
    good = updates[0].open

    class FailingReader:
        def __init__(self, reader):
            self.reader = reader
            self.tensors = reader.tensors

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.reader.close()

        def read_block(self, *args):
            raise failure

    def broken():
        if when == "opening":
            raise failure
        return FailingReader(good())

    updates.append(UpdateInput("bad", "00", 1, broken))
    with pytest.raises(StoreUnavailable, match="update bad") as error:
        create_aggregator("fedavg").aggregate(updates, spec_of(updates))
    assert not isinstance(error.value, UpdateUnreadable)


def test_nothing_to_aggregate_is_an_error():
    with pytest.raises(ValueError, match="no updates"):
        create_aggregator("mean").aggregate([], TensorSpec(()))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("fedavg", {"weighted": "yes"}, "'weighted' for aggregator 'fedavg' must be a bool"),
        ("fedavg", {"server_lr": 1.0}, "unknown parameter.*server_lr.*it takes weighted"),
        ("mean", {"x": 1}, "it takes no parameters"),
        ("trimmed_mean", {"trim_fraction": 0.5}, r"trim_fraction must be in \[0, 0.5\)"),
        ("trimmed_mean", {"trim_fraction": True}, "must be a float"),
    ],
)
def test_parameters_are_typed_and_validated(name, params, message):
    with pytest.raises(ConfigurationError, match=message):
        create_aggregator(name, params)


def test_int_parameters_are_accepted_for_floats():
    assert create_aggregator("trimmed_mean", {"trim_fraction": 0}).params.trim_fraction == 0.0


def test_unknown_aggregator_lists_the_available_ones():
    with pytest.raises(
        UnknownAggregator, match=r"unknown aggregator 'geomed'; available: .*bulyan.*fedavg.*krum"
    ):
        create_aggregator("geomed")


def test_a_third_party_algorithm_plugs_in_through_an_entry_point(tmp_path, monkeypatch):
    package = tmp_path / "fma_krum_plugin.py"
    package.write_text(
        textwrap.dedent(
            """
            import numpy as np
            from fma_core.aggregators import LinearAggregator

            class FirstOnly(LinearAggregator):
                name = "first_only"

                def coefficients(self, updates):
                    return np.eye(len(updates))[0]
            """
        )
    )
    dist = tmp_path / "fma_krum_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fma-krum-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fma_core.aggregators]\nfirst_only = fma_krum_plugin:FirstOnly\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._plugins.cache_clear()
    try:
        assert "first_only" in available()
        cls = aggregator_class("first_only")
        assert issubclass(cls, Aggregator)
        updates = make_updates(3)
        result = create_aggregator("first_only").aggregate(updates, spec_of(updates))
        first = min(updates, key=lambda u: u.content_id)
        np.testing.assert_array_equal(result["t2"], arrays(first)["t2"])
    finally:
        registry._plugins.cache_clear()
        sys.modules.pop("fma_krum_plugin", None)


@pytest.mark.parametrize("params", [[1], "fedavg", 3])
def test_parameters_that_are_not_an_object_are_refused(params):
    with pytest.raises(ConfigurationError, match="must be an object"):
        create_aggregator("fedavg", params)
