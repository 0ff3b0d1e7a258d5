"""DeltaReader: an update sent as a delta reads back as its base plus the delta; a round reads a shared base once."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest

from fma_core.connectors import ExperimentConfig, InMemoryMetadataStore, LocalDirectoryWeightStore
from fma_core.errors import InvalidWeights
from fma_core.rounds import RoundEngine
from fma_core.weights import ArrayReader, WeightsReader, load, open_weights, to_bytes
from fma_core.weights.delta import DeltaReader, ScaledChangeReader


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((64, 10)).astype(np.float32),
        "b": rng.standard_normal(10).astype(np.float32),
        "steps": np.array([seed], dtype=np.int64),
    }


def test_reads_base_plus_delta_block_by_block_into_the_callers_buffer():
    base, trained = weights(1), weights(2)
    delta = {name: trained[name] - base[name] for name in base}
    with DeltaReader(open_weights(to_bytes(delta)), open_weights(to_bytes(base))) as reader:
        assert list(reader.tensors) == ["w", "b", "steps"]
        for name in base:
            np.testing.assert_allclose(reader.read(name), trained[name], rtol=0, atol=1e-6)
        buffer = np.empty(700, dtype=np.float32)
        block = reader.read_block("w", 100, 300, buffer)
        assert np.shares_memory(block, buffer)
        np.testing.assert_allclose(block, trained["w"].reshape(-1)[100:300], atol=1e-6)
        assert reader.read("steps").tolist() == [2]


@pytest.mark.parametrize(
    "change",
    [
        lambda w: {**w, "w": w["w"][:, :5]},  # another shape
        lambda w: {**w, "b": w["b"].astype(np.float64)},  # another dtype
        lambda w: {k: v for k, v in w.items() if k != "b"},  # a tensor missing
        lambda w: {"b": w["b"], "w": w["w"], "steps": w["steps"]},  # another order
    ],
)
def test_a_delta_that_does_not_fit_its_base_is_refused(change):
    base = weights(1)
    with pytest.raises(InvalidWeights, match="exactly the tensors"):
        DeltaReader(ArrayReader(change(weights(2))), ArrayReader(base))


class CountingStore(LocalDirectoryWeightStore):
    """Counts, per key, the readers opened and closed and the blocks read through them."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.opened, self.closed, self.blocks = Counter(), Counter(), Counter()

    def open_weights(self, key, *, max_bytes=None):
        self.opened[key] += 1
        return Counted(super().open_weights(key, max_bytes=max_bytes), key, self)


class Counted(WeightsReader):
    def __init__(self, reader, key, store) -> None:
        self.reader, self.key, self.store = reader, key, store

    @property
    def tensors(self):
        return self.reader.tensors

    def read_block(self, name, start, stop, buffer=None):
        self.store.blocks[self.key] += 1
        return self.reader.read_block(name, start, stop, buffer)

    def close(self) -> None:
        self.store.closed[self.key] += 1
        self.reader.close()


def test_a_round_of_deltas_reads_each_base_once_for_all_the_deltas_on_it(tmp_path):
    store = CountingStore(tmp_path)
    metadata = InMemoryMetadataStore()
    metadata.create_experiment(ExperimentConfig("e"), clients=["a", "b", "c", "d"])
    bases = {"base": weights(1), "old": weights(2)}
    for key, base in bases.items():
        store.put(key, io.BytesIO(to_bytes(base)))
    expected = []
    for client, (base_key, seed) in zip(
        "abcd", [("base", 3), ("base", 4), ("base", 5), ("old", 6)], strict=True
    ):
        trained = weights(seed)
        delta = {name: trained[name] - bases[base_key][name] for name in trained}
        stored = store.put(f"updates/{client}", io.BytesIO(to_bytes(delta)))
        metadata.add_update(
            "e",
            client_id=client,
            weights_key=stored.key,
            content_id=stored.sha256,
            num_examples=1,
            base_weights_key=base_key,
            delta=True,
        )
        expected.append({name: bases[base_key][name] + delta[name] for name in delta})

    outcome = RoundEngine(metadata, store, threads=2).run_round("e")

    assert outcome.status == "committed"
    with store.open(outcome.aggregate.draft.weights_key) as stream:
        aggregate = load(stream)
    for name in ("w", "b"):  # the plain mean of the four models, each its base plus its delta
        np.testing.assert_allclose(aggregate[name], np.mean([m[name] for m in expected], axis=0), atol=1e-6)
    assert store.opened["base"] == store.opened["old"] == 1  # opened once for all the deltas on it...
    assert store.blocks["base"] == store.blocks["old"] == store.blocks["updates/a"]  # ...and read once
    assert store.closed == store.opened  # every reader closed, the shared bases included


def test_a_scaled_change_reads_the_same_in_any_blocks_and_leaves_integer_tensors_alone():
    rng = np.random.default_rng(3)
    change = {
        "half": rng.standard_normal(1000).astype(np.float16),
        "double": rng.standard_normal(1000),
        "count": np.arange(1000, dtype=np.int64),
    }
    base = {name: np.ones_like(values) for name, values in change.items()}
    factor = 0.3
    whole = ScaledChangeReader(ArrayReader(change), factor, ArrayReader(base))
    alone = ScaledChangeReader(ArrayReader(change), factor)
    for name in change:
        read = whole.read_block(name, 0, 1000)
        pieces = np.concatenate([whole.read_block(name, a, min(a + 333, 1000)) for a in range(0, 1000, 333)])
        assert read.dtype == change[name].dtype
        assert read.tobytes() == pieces.tobytes()
    np.testing.assert_array_equal(whole.read_block("count", 0, 1000), change["count"] + 1)
    np.testing.assert_array_equal(alone.read_block("count", 0, 1000), change["count"])
    expected = (change["half"].astype(np.float32) * np.float32(factor) + 1).astype(np.float16)
    assert whole.read_block("half", 0, 1000).tobytes() == expected.tobytes()
    np.testing.assert_allclose(alone.read_block("double", 0, 1000), change["double"] * factor, rtol=1e-15)
    with pytest.raises(InvalidWeights, match="exactly the tensors"):
        ScaledChangeReader(ArrayReader(change), factor, ArrayReader({"half": base["half"]}))
