"""fma_core.connectors: the local weight store and the in-memory metadata store's contract."""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from fma_core.connectors import (
    AggregateDraft,
    ExperimentConfig,
    InMemoryMetadataStore,
    LocalDirectoryWeightStore,
)
from fma_core.errors import InvalidKey, InvalidWeights, LeaseLost, ObjectNotFound

from .multipart_contract import CONTRACT


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_put_streams_measures_and_reads_back(tmp_path):
    store = LocalDirectoryWeightStore(tmp_path)
    data = os.urandom(3 * (1 << 20) + 5)
    stored = store.put("updates/e1/u1.safetensors", io.BytesIO(data))
    assert stored.size == len(data)
    import hashlib

    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.exists("updates/e1/u1.safetensors")
    with store.open("updates/e1/u1.safetensors") as file:
        assert file.read() == data
    store.delete("updates/e1/u1.safetensors")
    store.delete("updates/e1/u1.safetensors")  # twice is fine
    assert not store.exists("updates/e1/u1.safetensors")
    with pytest.raises(ObjectNotFound):
        store.open("updates/e1/u1.safetensors")


def test_an_oversized_or_failed_put_leaves_nothing_behind(tmp_path):
    store = LocalDirectoryWeightStore(tmp_path)
    with pytest.raises(InvalidWeights, match="larger than the limit of 1,000 bytes"):
        store.put("a/b", io.BytesIO(bytes(5000)), max_bytes=1000)

    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put("a/c", Broken())
    assert not store.exists("a/b")
    assert not store.exists("a/c")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_put_replaces_atomically(tmp_path):
    store = LocalDirectoryWeightStore(tmp_path)
    store.put("k", io.BytesIO(b"old"))
    with store.open("k") as reader:
        store.put("k", io.BytesIO(b"new"))
        assert reader.read() == b"old"  # an open reader keeps the whole old object
    with store.open("k") as reader:
        assert reader.read() == b"new"


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../outside", "a/../../b", "a//b", ".tmp/x", "a/.hidden", "a\\b", "a b"]
)
def test_keys_cannot_escape_the_root(tmp_path, key):
    store = LocalDirectoryWeightStore(tmp_path / "root")
    with pytest.raises(InvalidKey):
        store.put(key, io.BytesIO(b"x"))
    with pytest.raises(InvalidKey):
        store.exists(key)


def test_a_symlink_out_of_the_root_is_not_followed(tmp_path):
    store = LocalDirectoryWeightStore(tmp_path / "root")
    (tmp_path / "secret").write_text("secret")
    (tmp_path / "root" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ObjectNotFound):
        store.open("link")


def memory_store(clock: Clock) -> InMemoryMetadataStore:
    store = InMemoryMetadataStore(clock=clock)
    store.create_experiment(ExperimentConfig("e1"), clients=["c1", "c2"])
    for client in ("c1", "c2"):
        store.add_update("e1", client_id=client, weights_key=f"k/{client}", content_id=client, num_examples=1)
    return store


def draft(update_ids) -> AggregateDraft:
    return AggregateDraft("agg", "sha", 1, tuple(update_ids), None, "fedavg", {}, 0.1)


def test_one_live_claim_per_experiment_and_takeover_after_expiry():
    clock = Clock()
    store = memory_store(clock)
    first = store.claim_round("e1", worker="w1", lease_seconds=10)
    assert first is not None
    assert len(first.updates) == 2
    assert first.round_number == 1
    assert store.claim_round("e1", worker="w2", lease_seconds=10) is None
    clock.now += 11
    second = store.claim_round("e1", worker="w2", lease_seconds=10)
    assert second is not None
    assert second.token != first.token
    with pytest.raises(LeaseLost):
        store.commit_round(first, draft(u.update_id for u in first.updates))
    with pytest.raises(LeaseLost):
        store.renew_lease(first, lease_seconds=10)
    record = store.commit_round(second, draft(u.update_id for u in second.updates))
    assert record.round_number == 1
    assert record.parent_aggregate_id is None
    assert all(store.update_status(u.update_id) == ("consumed", record.aggregate_id) for u in second.updates)
    assert store.claim_round("e1", worker="w1", lease_seconds=10) is None  # nothing pending


def test_commit_marks_exactly_the_drafted_updates():
    store = memory_store(Clock())
    claim = store.claim_round("e1", worker="w", lease_seconds=10)
    store.quarantine_update(claim, claim.updates[0].update_id, "bad header")
    store.commit_round(claim, draft([claim.updates[1].update_id]))
    assert store.update_status(claim.updates[0].update_id) == ("quarantined", "bad header")
    assert store.update_status(claim.updates[1].update_id)[0] == "consumed"


def test_a_draft_cannot_smuggle_in_an_update_outside_the_claim():
    store = memory_store(Clock())
    claim = store.claim_round("e1", worker="w", lease_seconds=10)
    late = store.add_update("e1", client_id="c1", weights_key="k/late", content_id="late", num_examples=1)
    with pytest.raises(LeaseLost, match="not a pending update of this claim"):
        store.commit_round(claim, draft([late.update_id]))
    assert store.update_status(late.update_id) == ("pending", None)


def test_release_gives_the_round_back_and_records_a_failure():
    store = memory_store(Clock())
    claim = store.claim_round("e1", worker="w", lease_seconds=10)
    store.release_round(claim, failure="disk full")
    assert store.failures("e1") == ["disk full"]
    assert store.claim_round("e1", worker="w", lease_seconds=10) is not None


def test_submitting_the_same_update_id_twice_stores_it_once():
    store = memory_store(Clock())
    a = store.add_update(
        "e1", client_id="c1", weights_key="k", content_id="x", num_examples=1, update_id="same"
    )
    b = store.add_update(
        "e1", client_id="c1", weights_key="k", content_id="x", num_examples=1, update_id="same"
    )
    assert a == b
    assert len(store.pending_updates("e1")) == 3


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
def test_local_store_multipart_uploads(tmp_path, check):
    check(LocalDirectoryWeightStore(tmp_path), 1 << 16)


def test_local_store_ignores_upload_ids_that_are_paths(tmp_path):
    store = LocalDirectoryWeightStore(tmp_path)
    with pytest.raises(ObjectNotFound):
        store.uploaded_parts("updates/a.safetensors", "../../etc")


def test_local_store_writes_parts_in_place_and_refuses_one_of_another_size(tmp_path):
    store = LocalDirectoryWeightStore(tmp_path)
    upload = store.start_upload("updates/a.safetensors", [4, 3])
    second = store.put_part("updates/a.safetensors", upload, 2, io.BytesIO(b"efg"))
    short = store.put_part("updates/a.safetensors", upload, 1, io.BytesIO(b"ab"))  # cut short
    with pytest.raises(InvalidWeights, match="2 bytes, not 4"):
        store.complete_upload("updates/a.safetensors", upload, [short, second])
    with pytest.raises(InvalidWeights):  # larger than its range: refused, and forgotten
        store.put_part("updates/a.safetensors", upload, 1, io.BytesIO(b"abcde"))
    assert [p.number for p in store.uploaded_parts("updates/a.safetensors", upload)] == [2]
    with pytest.raises(InvalidWeights, match="parts 1 to 2"):
        store.put_part("updates/a.safetensors", upload, 3, io.BytesIO(b"x"))
    first = store.put_part("updates/a.safetensors", upload, 1, io.BytesIO(b"abcd"))
    store.complete_upload("updates/a.safetensors", upload, [first, second])
    with store.open("updates/a.safetensors") as file:
        assert file.read() == b"abcdefg"
    assert not list((tmp_path / ".uploads").iterdir())


def test_an_upload_left_by_an_earlier_version_is_unknown_and_can_be_aborted(tmp_path):
    store = LocalDirectoryWeightStore(tmp_path)
    upload = store.start_upload("updates/a.safetensors", [3])
    (tmp_path / ".uploads" / upload / "sizes.json").unlink()  # parts kept apart, no declared sizes
    with pytest.raises(ObjectNotFound, match="earlier version"):
        store.put_part("updates/a.safetensors", upload, 1, io.BytesIO(b"abc"))
    with pytest.raises(ObjectNotFound, match="earlier version"):
        store.uploaded_parts("updates/a.safetensors", upload)
    store.abort_upload("updates/a.safetensors", upload)
    assert not (tmp_path / ".uploads" / upload).exists()


class HeldBack(io.RawIOBase):
    """A part whose bytes arrive only once ``gate`` is set, like a slow client's; ``reading`` is set
    once the store has begun to read it (it holds the upload's lock by then)."""

    def __init__(self, data: bytes, gate: threading.Event) -> None:
        super().__init__()
        self.data, self.gate, self.reading = data, gate, threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.reading.set()
        self.gate.wait(60)
        chunk, self.data = self.data[: len(buffer)], self.data[len(buffer) :]
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_a_part_sent_while_the_upload_completes_is_joined_whole_or_not_at_all(tmp_path):
    # A client's stale retry of a part can arrive while the upload completes: the join waits for
    # it and takes its bytes whole (the caller's hash of the joined object then says whether they
    # are the listed ones), and once joined no part reaches the object.
    store = LocalDirectoryWeightStore(tmp_path)
    upload = store.start_upload("updates/a.safetensors", [4])
    listed = [store.put_part("updates/a.safetensors", upload, 1, io.BytesIO(b"aaaa"))]
    gate = threading.Event()
    held = HeldBack(b"bbbb", gate)
    with ThreadPoolExecutor(2) as pool:
        resend = pool.submit(store.put_part, "updates/a.safetensors", upload, 1, held)
        assert held.reading.wait(60)  # the resent part is being written, under the upload's lock
        completing = pool.submit(store.complete_upload, "updates/a.safetensors", upload, listed)
        assert not completing.done()  # completion waits for it...
        gate.set()
        resend.result()
        completing.result()  # ...then joins what the part holds now
    with pytest.raises(ObjectNotFound):  # once joined, no part reaches the object
        store.put_part("updates/a.safetensors", upload, 1, io.BytesIO(b"cccc"))
    with store.open("updates/a.safetensors") as file:
        assert file.read() == b"bbbb"
