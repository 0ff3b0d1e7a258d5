"""fma-core's round engine over updates in S3 gives the aggregate it gives over the local store."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fma_core.connectors import (
    ExperimentConfig,
    InMemoryMetadataStore,
    LocalDirectoryWeightStore,
    WeightStore,
)
from fma_core.rounds import RoundEngine, RoundOutcome
from fma_core.weights import to_bytes


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "fc.weight": rng.standard_normal((300, 200)).astype(np.float32),
        "fc.bias": rng.standard_normal(200).astype(np.float32),
    }


def run_round(weights: WeightStore, aggregator: str, *, shard_bytes: int | None) -> RoundOutcome:
    metadata = InMemoryMetadataStore()
    metadata.create_experiment(ExperimentConfig("e", aggregator=aggregator), clients=["c0", "c1", "c2", "c3"])
    updates = [to_bytes(model(seed)) for seed in range(3)] + [b"not safetensors"]
    for index, data in enumerate(updates):
        stored = weights.put(f"updates/e/{index}.safetensors", io.BytesIO(data))
        metadata.add_update(
            "e",
            client_id=f"c{index}",
            weights_key=stored.key,
            content_id=stored.sha256,
            num_examples=10 * (index + 1),
            update_id=f"u{index}",
        )
    return RoundEngine(metadata, weights, threads=2, shard_bytes=shard_bytes).run_round("e")


@pytest.mark.parametrize(
    ("aggregator", "shard_bytes"),
    [("fedavg", None), ("median", None), ("fedavg", 100_000)],
    ids=["fedavg", "median", "fedavg-sharded"],
)
def test_a_round_over_s3_equals_the_same_round_over_the_local_store(store, tmp_path, aggregator, shard_bytes):
    local = LocalDirectoryWeightStore(tmp_path)
    on_s3 = run_round(store, aggregator, shard_bytes=shard_bytes)
    on_disk = run_round(local, aggregator, shard_bytes=shard_bytes)
    assert on_s3.status == on_disk.status == "committed"
    assert on_s3.quarantined == on_disk.quarantined == ("u3",)
    assert on_s3.aggregate.draft.content_id == on_disk.aggregate.draft.content_id
    with (
        store.open(on_s3.aggregate.draft.weights_key) as from_s3,
        local.open(on_disk.aggregate.draft.weights_key) as from_disk,
    ):
        assert from_s3.read() == from_disk.read()
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix="fma/partials/")
    assert listed["KeyCount"] == 0  # a sharded round's partial results are removed once committed
