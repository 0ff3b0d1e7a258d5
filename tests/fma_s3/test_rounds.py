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
from fma_core.shards import balance_shards
from fma_core.weights import TensorSpec, open_weights, to_bytes


def model(seed: int, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "fc.weight": rng.standard_normal((rows, 200)).astype(np.float32),
        "fc.bias": rng.standard_normal(200).astype(np.float32),
    }


def run_round(weights: WeightStore, aggregator: str, *, shard_bytes: int | None, rows: int) -> RoundOutcome:
    metadata = InMemoryMetadataStore()
    metadata.create_experiment(ExperimentConfig("e", aggregator=aggregator), clients=["c0", "c1", "c2", "c3"])
    updates = [to_bytes(model(seed, rows)) for seed in range(3)] + [b"not safetensors"]
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
    ("aggregator", "shard_bytes", "rows"),
    # S3's parts are 5 MiB or more: a 12 MB model makes two shards there
    [("fedavg", None, 300), ("median", None, 300), ("fedavg", 5_000_000, 15_000)],
    ids=["fedavg", "median", "fedavg-sharded"],
)
def test_a_round_over_s3_equals_the_same_round_over_the_local_store(
    store, tmp_path, aggregator, shard_bytes, rows
):
    if shard_bytes:
        spec = TensorSpec.from_reader(open_weights(io.BytesIO(to_bytes(model(0, rows)))))
        assert len(balance_shards(spec, shard_bytes, min_bytes=store.min_part_bytes)) == 2
    local = LocalDirectoryWeightStore(tmp_path)
    on_s3 = run_round(store, aggregator, shard_bytes=shard_bytes, rows=rows)
    on_disk = run_round(local, aggregator, shard_bytes=shard_bytes, rows=rows)
    assert on_s3.status == on_disk.status == "committed"
    assert on_s3.quarantined == on_disk.quarantined == ("u3",)
    assert on_s3.aggregate.draft.content_id == on_disk.aggregate.draft.content_id
    with (
        store.open(on_s3.aggregate.draft.weights_key) as from_s3,
        local.open(on_disk.aggregate.draft.weights_key) as from_disk,
    ):
        assert from_s3.read() == from_disk.read()
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix="fma/shards/")
    assert listed["KeyCount"] == 0  # a sharded round's records are removed once committed
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")
