"""fma-core's round engine over updates in S3 gives the aggregate it gives over the local store."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from fma_core.aggregators import Aggregator, registry
from fma_core.aggregators.base import Block
from fma_core.aggregators.base import store as store_block
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


def experiment(
    weights: WeightStore, aggregator: str, *, rows: int, seeds: Sequence[int] = (0, 1, 2)
) -> InMemoryMetadataStore:
    """Experiment "e" with update ``u<seed>`` (``model(seed, rows)``) for each seed, and ``u3``, not safetensors."""
    metadata = InMemoryMetadataStore()
    metadata.create_experiment(ExperimentConfig("e", aggregator=aggregator), clients=["c0", "c1", "c2", "c3"])
    updates = {seed: to_bytes(model(seed, rows)) for seed in seeds} | {3: b"not safetensors"}
    for number, data in updates.items():
        stored = weights.put(f"updates/e/{number}.safetensors", io.BytesIO(data))
        metadata.add_update(
            "e",
            client_id=f"c{number}",
            weights_key=stored.key,
            content_id=stored.sha256,
            num_examples=10 * (number + 1),
            update_id=f"u{number}",
        )
    return metadata


def run_round(
    weights: WeightStore,
    aggregator: str,
    *,
    shard_bytes: int | None,
    rows: int,
    seeds: Sequence[int] = (0, 1, 2),
) -> RoundOutcome:
    """A round of ``experiment``."""
    metadata = experiment(weights, aggregator, rows=rows, seeds=seeds)
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


def test_a_get_fetched_ahead_that_fails_gives_the_round_back_and_loses_no_update(store, tmp_path):
    failed = []

    def fail_ahead(**kwargs) -> None:  # the read-ahead's GETs of update 1 break; its own reads do not
        ahead = threading.current_thread().name.startswith("fma-s3-read")
        if ahead and kwargs["params"]["url_path"].endswith("/1.safetensors"):
            failed.append(kwargs["params"]["headers"]["Range"])
            raise ConnectionResetError("the gateway went away")

    store.client.meta.events.register("before-call.s3.GetObject", fail_ahead)
    rows = 15_000  # 12 MB an update: several chunks fetched ahead
    metadata = experiment(store, "fedavg", rows=rows)
    engine = RoundEngine(metadata, store, threads=2)
    given_back = engine.run_round("e")
    assert failed
    # the store failed, not u1: nothing but the invalid u3 is quarantined, and nothing is committed
    assert given_back.status == "failed"
    assert "the weight store is unavailable" in given_back.reason
    assert [metadata.update_status(f"u{n}")[0] for n in range(4)] == ["pending"] * 3 + ["quarantined"]
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix="fma/")["Contents"]
    assert all(item["Key"].startswith("fma/updates/") for item in listed)  # the attempt wrote nothing
    assert store.read_ahead.reserved == 0

    store.client.meta.events.unregister("before-call.s3.GetObject", fail_ahead)
    on_s3 = engine.run_round("e")  # the sweep's next run, the gateway back
    assert on_s3.status == "committed"
    assert sorted(on_s3.aggregate.draft.update_ids) == ["u0", "u1", "u2"]
    on_disk = run_round(LocalDirectoryWeightStore(tmp_path), "fedavg", shard_bytes=None, rows=rows)
    assert on_s3.aggregate.draft.content_id == on_disk.aggregate.draft.content_id
    assert len(metadata.aggregates("e")) == 1


def _slow_down(**kwargs) -> None:
    raise ClientError(
        {
            "Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
            "ResponseMetadata": {"HTTPStatusCode": 503},
        },
        "GetObject",
    )


def _unreachable(**kwargs) -> None:
    raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")


def _timed_out(**kwargs) -> None:
    raise ReadTimeoutError(endpoint_url="http://127.0.0.1:1")


@pytest.mark.parametrize(
    "failure", [_slow_down, _unreachable, _timed_out], ids=["503", "connection", "timeout"]
)
@pytest.mark.parametrize("shard_bytes", [None, 5_000_000], ids=["whole", "sharded"])
def test_a_get_failing_after_botocores_retries_quarantines_nothing_and_the_next_run_commits_all(
    store, failure, shard_bytes
):
    rows = 15_000  # 12 MB an update: two shards of 5 MB
    metadata = experiment(store, "fedavg", rows=rows)
    gets = []

    def nth_get_fails(**kwargs) -> None:  # the header checks are GETs 1 to 4; a round's reads follow
        gets.append(kwargs["params"]["url_path"])
        if len(gets) == 7:
            failure(**kwargs)

    store.client.meta.events.register("before-call.s3.GetObject", nth_get_fails)
    engine = RoundEngine(metadata, store, threads=2, shard_bytes=shard_bytes)
    given_back = engine.run_round("e")
    assert len(gets) >= 7
    assert given_back.status == "failed"
    assert "the weight store is unavailable: " in given_back.reason
    assert [metadata.update_status(f"u{n}")[0] for n in range(4)] == ["pending"] * 3 + ["quarantined"]
    assert metadata.aggregates("e") == []
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")

    again = engine.run_round("e")
    assert again.status == "committed"
    assert sorted(again.aggregate.draft.update_ids) == ["u0", "u1", "u2"]
    assert [metadata.update_status(f"u{n}")[0] for n in range(3)] == ["consumed"] * 3
    assert len(metadata.aggregates("e")) == 1
    assert engine.run_round("e").status == "idle"


class TwoMoments(Aggregator):
    """A stateful algorithm with two state tensors (an Adam-like step), so a sharded round's state upload
    has parts of two sections: m ← ½·m + Δ, v ← v + Δ², x ← x_parent + m / (√v + 1)."""

    name = "two_moments"
    needs_parent = True
    reads_changes = True
    state_tensors = ("m", "v")

    def _combine(self, block: Block) -> None:
        acc = block.accumulator
        change = block.scratch.get("change", block.count, acc)
        change.fill(0)
        for value in block.inputs():
            np.add(change, value, change)
        np.multiply(change, acc.type(1 / block.input_count), change)
        m, v = block.state_out["m"], block.state_out["v"]
        np.multiply(block.state("m"), acc.type(0.5), m)
        np.add(m, change, m)
        np.add(block.state("v"), np.square(change), v)
        result = np.sqrt(v) + acc.type(1)
        np.divide(m, result, result)
        np.add(result, block.parent(), result, casting="unsafe")
        store_block(result, block.out)


def stateful_rounds(weights: WeightStore, *, shard_bytes: int | None, rows: int) -> list[RoundOutcome]:
    """Two rounds of ``two_moments``, the second continuing from the state the first left."""
    metadata = InMemoryMetadataStore()
    initial = weights.put("artifacts/e/initial.safetensors", io.BytesIO(to_bytes(model(99, rows))))
    metadata.create_experiment(
        ExperimentConfig("e", aggregator="two_moments"), clients=["c0", "c1"], initial_weights_key=initial.key
    )
    outcomes = []
    for round_number in range(2):
        for seed in range(2):
            stored = weights.put(
                f"updates/e/{round_number}-{seed}.safetensors",
                io.BytesIO(to_bytes(model(10 * round_number + seed, rows))),
            )
            metadata.add_update(
                "e",
                client_id=f"c{seed}",
                weights_key=stored.key,
                content_id=stored.sha256,
                num_examples=1,
                base_round=round_number,
            )
        outcomes.append(RoundEngine(metadata, weights, threads=2, shard_bytes=shard_bytes).run_round("e"))
    return outcomes


def test_a_stateful_sharded_round_over_s3_writes_the_state_the_local_store_gets_unsharded(
    store, tmp_path, monkeypatch
):
    monkeypatch.setitem(registry.BUILT_IN, "two_moments", TwoMoments)
    rows = 15_000  # 12 MB: two shards of S3's 5 MiB parts, each state section of them a part of its own
    on_s3 = stateful_rounds(store, shard_bytes=5_000_000, rows=rows)
    on_disk = stateful_rounds(LocalDirectoryWeightStore(tmp_path), shard_bytes=None, rows=rows)
    for s3_round, disk_round in zip(on_s3, on_disk, strict=True):
        assert s3_round.status == disk_round.status == "committed"
        s3_draft, disk_draft = s3_round.aggregate.draft, disk_round.aggregate.draft
        assert s3_draft.content_id == disk_draft.content_id
        assert s3_draft.state_content_id == disk_draft.state_content_id is not None
        with store.open(s3_draft.state_key) as stream:
            assert hashlib.sha256(stream.read()).hexdigest() == s3_draft.state_content_id
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")
