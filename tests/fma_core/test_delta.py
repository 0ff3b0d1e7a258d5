"""DeltaReader: an update sent as a delta reads back as its base plus the delta."""

from __future__ import annotations

import numpy as np
import pytest

from fma_core.errors import InvalidWeights
from fma_core.weights import ArrayReader, open_weights, to_bytes
from fma_core.weights.delta import DeltaReader


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
