"""fma_core.leases: an alive worker keeps its round however long it takes; a lost round stops the work."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest

from fma_core.connectors import ExperimentConfig, InMemoryMetadataStore, LocalDirectoryWeightStore
from fma_core.errors import LeaseLost
from fma_core.leases import LeaseKeeper
from fma_core.rounds import RoundEngine
from fma_core.weights import SafetensorsReader, to_bytes

LEASE = 0.6  # seconds; the heartbeat renews every 0.2 s


class SlowStore(LocalDirectoryWeightStore):
    """Each update takes ``pause`` seconds to open, so the round outlasts several leases."""

    pause = 0.15

    def open_weights(self, key: str, *, max_bytes: int | None = None) -> SafetensorsReader:
        if key.startswith("updates/"):
            time.sleep(self.pause)
        return super().open_weights(key, max_bytes=max_bytes)


def world(tmp_path, updates: int = 5, clock=time.time):
    metadata = InMemoryMetadataStore(clock=clock)  # by default the real clock: the heartbeat is a real thread
    metadata.create_experiment(ExperimentConfig("e"), clients=["a"])
    store = SlowStore(tmp_path)
    for i in range(updates):
        body = to_bytes({"w": np.full(4096, float(i), np.float32)})
        stored = store.put(f"updates/{i}.safetensors", io.BytesIO(body))
        metadata.add_update(
            "e", client_id="a", weights_key=stored.key, content_id=stored.sha256, num_examples=1
        )
    return metadata, store


@pytest.mark.parametrize("shard_bytes", [None, 8192])
def test_a_round_slower_than_its_lease_keeps_it_and_commits_once(tmp_path, shard_bytes):
    metadata, store = world(
        tmp_path
    )  # 5 updates opened twice (checks, then aggregation): ≥ 1.5 s, 2.5 leases
    slow = RoundEngine(metadata, store, worker_id="slow", lease_seconds=LEASE, shard_bytes=shard_bytes)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(slow.run_round("e")))
    worker.start()
    while metadata.experiments_to_sweep(now=time.time()):  # until the slow worker holds the round
        time.sleep(0.01)
    rivals = []
    while worker.is_alive():  # another worker keeps trying to take the round over meanwhile
        rivals.append(RoundEngine(metadata, store, worker_id="rival", lease_seconds=LEASE).claim("e"))
        time.sleep(0.05)
    worker.join()
    assert [o.status for o in outcome] == ["committed"]
    assert len(rivals) > 10
    assert set(rivals) == {None}  # the lease was live every time a rival looked
    [aggregate] = metadata.aggregates("e")
    assert len(aggregate.draft.update_ids) == 5
    assert metadata.pending_updates("e") == []


def test_leaving_the_heartbeat_of_a_round_taken_over_raises_lease_lost(tmp_path):
    now = [0.0]
    metadata, _ = world(tmp_path, updates=1, clock=lambda: now[0])
    claim = metadata.claim_round("e", worker="stalled", lease_seconds=1)
    keeper = LeaseKeeper(metadata, claim, lease_seconds=0.03)

    def stall_and_be_taken_over() -> None:
        with keeper:
            now[0] += 2
            assert metadata.claim_round("e", worker="other", lease_seconds=10) is not None
            time.sleep(0.1)  # a few beats: the first one finds the round taken over

    with pytest.raises(LeaseLost):
        stall_and_be_taken_over()
    with pytest.raises(LeaseLost):  # and a lost claim cannot even start working
        LeaseKeeper(metadata, claim, lease_seconds=1).__enter__()
