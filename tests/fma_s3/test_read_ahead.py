"""The S3 store's read-ahead (fma_s3.read_ahead): large GETs fetched ahead of the blocks a reader
asks for, bounded in memory and in GETs in flight, the same bytes as without it, errors where the
bytes are needed, nothing left running once a reader is closed."""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fma_core.errors import InvalidWeights
from fma_core.weights import to_bytes
from fma_s3.read_ahead import MIN_CHUNK
from fma_s3.reading import HEADER_PREFETCH, ObjectVersion

from .conftest import FetchedBytes

READ_THREAD = "fma-s3-read"


def odd_model(seed: int) -> dict[str, np.ndarray]:
    """Tensors of sizes that fall across chunk boundaries anywhere, in several dtypes."""
    rng = np.random.default_rng(seed)
    return {
        "a": rng.standard_normal(1_000_003).astype(np.float32),
        "b": rng.integers(-(10**12), 10**12, 77_777, dtype=np.int64),
        "c": rng.standard_normal(999_999).astype(np.float16),
        "d": rng.standard_normal(3).astype(np.float64),
        "e": rng.standard_normal(500_001).astype(np.float32),
    }


class GetsInFlight:
    """Counts the ranged GETs running at once (each from its request to the end of its body), and the
    budget in use each time one starts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store) -> None:
        self.running = self.most = self.most_read_ahead = 0
        self.reserved: list[int] = []
        self._lock = threading.Lock()
        self._read_ahead_running = 0
        read_into = ObjectVersion.read_into

        def counted(version: ObjectVersion, first: int, view: memoryview) -> None:
            ahead = threading.current_thread().name.startswith(READ_THREAD)
            with self._lock:
                self.running += 1
                self._read_ahead_running += ahead
                self.most = max(self.most, self.running)
                self.most_read_ahead = max(self.most_read_ahead, self._read_ahead_running)
                self.reserved.append(store.read_ahead.reserved)
            try:
                read_into(version, first, view)
            finally:
                with self._lock:
                    self.running -= 1
                    self._read_ahead_running -= ahead

        monkeypatch.setattr(ObjectVersion, "read_into", counted)


def read_in_blocks(reader, name: str, block: int) -> np.ndarray:
    info = reader.tensors[name]
    out = np.empty(info.size, info.numpy_dtype)
    for start in range(0, info.size, block):
        stop = min(start + block, info.size)
        out[start:stop] = reader.read_block(name, start, stop, np.empty(block, info.numpy_dtype))
    return out


def read_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(READ_THREAD)]


@pytest.mark.parametrize("block", [99_991, 262_144, 7])
def test_blocks_across_chunk_and_tensor_boundaries_are_the_stored_bytes(make_store, block):
    # a budget of 3 MiB for one object: chunks of 1.5 MiB, so every tensor spans several
    store = make_store(read_ahead_bytes=3 * MIN_CHUNK)
    model = odd_model(1)
    store.put("u", io.BytesIO(to_bytes(model)))
    fetched = FetchedBytes(store.client)
    with store.open_weights("u") as reader:
        for name in reader.tensors:
            if block == 7 and reader.tensors[name].size > 100_000:
                np.testing.assert_array_equal(read_in_blocks(reader, name, 100_003), model[name])
            else:
                np.testing.assert_array_equal(read_in_blocks(reader, name, block), model[name])
    assert max(fetched.requests) <= 3 * MIN_CHUNK // 2
    assert store.read_ahead.reserved == 0


def test_gets_in_flight_and_memory_stay_within_the_stores_bounds(make_store, monkeypatch):
    budget, concurrency = 8 * MIN_CHUNK, 2
    store = make_store(read_ahead_bytes=budget, read_concurrency=concurrency)
    models = [odd_model(seed) for seed in range(6)]
    for seed, model in enumerate(models):
        store.put(f"u{seed}", io.BytesIO(to_bytes(model)))
    gets = GetsInFlight(monkeypatch, store)
    threads_before = len(read_threads())
    readers = [store.open_weights(f"u{seed}") for seed in range(6)]
    try:
        # two threads take blocks of every object in turn, as a round's do
        def read(seed: int) -> None:
            for name in ("a", "e"):
                np.testing.assert_array_equal(read_in_blocks(readers[seed], name, 65_536), models[seed][name])

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(read, range(6)))
    finally:
        for reader in readers:
            reader.close()
    assert gets.most_read_ahead <= concurrency
    assert gets.most <= concurrency + 2  # the read-ahead's, and one per reading thread
    assert max(gets.reserved) <= budget
    assert gets.running == 0
    assert store.read_ahead.reserved == 0
    assert len(read_threads()) <= threads_before + concurrency


def test_a_failed_get_ahead_fails_the_read_that_needs_its_bytes(store):
    model = odd_model(2)
    store.put("u", io.BytesIO(to_bytes(model)))
    failures = []

    def fail_ahead(**kwargs) -> None:
        if threading.current_thread().name.startswith(READ_THREAD):
            failures.append(kwargs["params"]["headers"]["Range"])
            raise ConnectionResetError("the gateway went away")

    store.client.meta.events.register("before-call.s3.GetObject", fail_ahead)
    with store.open_weights("u") as reader:
        first = reader.read_block("a", 0, 1000)  # its own GET; the chunks after it are fetched ahead
        np.testing.assert_array_equal(first, model["a"][:1000])
        with pytest.raises(ConnectionResetError, match="went away"):
            read_in_blocks(reader, "a", 65_536)
    assert failures
    assert store.read_ahead.reserved == 0


def test_an_object_replaced_while_chunks_are_fetched_ahead_fails_instead_of_mixing(store):
    store.put("u", io.BytesIO(to_bytes(odd_model(3))))
    with store.open_weights("u") as reader:
        reader.read_block("a", 0, 1000)
        store.put("u", io.BytesIO(to_bytes(odd_model(4))))
        with pytest.raises(InvalidWeights, match="changed or was removed"):
            read_in_blocks(reader, "a", 65_536)


def test_readers_closed_early_leave_no_get_running_and_no_budget_held(make_store, monkeypatch):
    store = make_store(read_concurrency=3)
    store.put("u", io.BytesIO(to_bytes(odd_model(5))))
    gets = GetsInFlight(monkeypatch, store)
    threads_before = len(read_threads())
    for _ in range(20):
        with store.open_weights("u") as reader:
            reader.read_block("a", 0, 1000)  # starts the read-ahead, whose chunks nobody reads
            assert store.read_ahead.reserved > 0
        assert gets.running == 0  # closing waited for the GETs it had started
        assert store.read_ahead.reserved == 0
    assert len(read_threads()) <= threads_before + 3
    with store.open_weights("u") as reader:  # the connections came back to the pool
        np.testing.assert_array_equal(read_in_blocks(reader, "e", 65_536), odd_model(5)["e"])
    with pytest.raises(ValueError, match="closed"):
        reader.read_block("a", 0, 10)


def test_a_jump_starts_the_read_ahead_over_where_the_reads_went(make_store):
    store = make_store(read_ahead_bytes=2 * MIN_CHUNK)  # chunks of 1 MiB
    model = odd_model(6)
    data = to_bytes(model)
    store.put("u", io.BytesIO(data))
    fetched = FetchedBytes(store.client)
    with store.open_weights("u") as reader:
        reader.read_block("a", 0, 1000)
        np.testing.assert_array_equal(read_in_blocks(reader, "e", 65_536), model["e"])
    assert 65_536 * 4 in fetched.requests  # the first block after the jump: its own GET
    # the header, a's block and one chunk after it, then e and at most a share past it: not the
    # megabytes between a's first block and e
    assert fetched.total <= HEADER_PREFETCH + 4000 + MIN_CHUNK + model["e"].nbytes + 2 * MIN_CHUNK
    assert fetched.total < len(data) - 2 * MIN_CHUNK


def test_a_forked_process_reads_with_a_pool_of_its_own(store):
    """A prefork worker inherits the store, its pool's state but not the pool's threads."""
    model = odd_model(7)
    store.put("u", io.BytesIO(to_bytes(model)))
    with store.open_weights("u") as reader:  # the parent's pool runs
        np.testing.assert_array_equal(read_in_blocks(reader, "a", 65_536), model["a"])

    def child() -> None:
        with store.open_weights("u") as reader:
            ok = np.array_equal(read_in_blocks(reader, "e", 65_536), model["e"])
        os._exit(0 if ok else 1)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=120)  # a child waiting on the parent's threads would never end
    if process.is_alive():
        process.kill()
    assert process.exitcode == 0
