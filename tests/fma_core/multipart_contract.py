"""What every WeightStore's multipart uploads must do; each store's tests run these on it."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from fma_core.connectors import UploadedPart, WeightStore
from fma_core.errors import InvalidWeights, ObjectNotFound

KEY = "updates/7/upload.safetensors"


def parts_join_in_order_whatever_order_they_arrive(store: WeightStore, part_size: int) -> None:
    data = os.urandom(2 * part_size + 123)
    chunks = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    upload = store.start_upload(KEY, [len(chunk) for chunk in chunks])
    for number in (3, 1, 2):
        part = store.put_part(KEY, upload, number, io.BytesIO(chunks[number - 1]))
        assert (part.number, part.size) == (number, len(chunks[number - 1]))
    listed = store.uploaded_parts(KEY, upload)
    assert [p.number for p in listed] == [1, 2, 3]
    assert store.complete_upload(KEY, upload, listed) is None  # the caller measures what was joined
    with store.open(KEY) as file:
        assert hashlib.sha256(file.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    with pytest.raises(ObjectNotFound):
        store.uploaded_parts(KEY, upload)  # a completed upload is over


def a_part_sent_again_replaces_the_first(store: WeightStore, part_size: int) -> None:
    upload = store.start_upload(KEY, [part_size])
    store.put_part(KEY, upload, 1, io.BytesIO(b"x" * part_size))
    store.put_part(KEY, upload, 1, io.BytesIO(b"y" * part_size))
    (part,) = store.uploaded_parts(KEY, upload)
    store.complete_upload(KEY, upload, [part])
    with store.open(KEY) as file:
        assert file.read() == b"y" * part_size


def completion_refuses_missing_or_altered_parts(store: WeightStore, part_size: int) -> None:
    upload = store.start_upload(KEY, [part_size, part_size, 10])
    first = store.put_part(KEY, upload, 1, io.BytesIO(b"a" * part_size))
    third = store.put_part(KEY, upload, 3, io.BytesIO(b"c" * 10))
    with pytest.raises(InvalidWeights):
        store.complete_upload(KEY, upload, [first, third])  # part 2 missing
    with pytest.raises(InvalidWeights):
        store.complete_upload(KEY, upload, [UploadedPart(1, part_size, "not-its-etag")])
    with pytest.raises(InvalidWeights):
        store.complete_upload(KEY, upload, [])
    assert not store.exists(KEY)
    store.abort_upload(KEY, upload)


def a_completed_upload_cannot_complete_again(store: WeightStore, part_size: int) -> None:
    upload = store.start_upload(KEY, [part_size])
    part = store.put_part(KEY, upload, 1, io.BytesIO(b"a" * part_size))
    store.complete_upload(KEY, upload, [part])
    with pytest.raises(ObjectNotFound):  # a twin completing the same upload learns it is done
        store.complete_upload(KEY, upload, [part])
    with store.open(KEY) as file:
        assert file.read() == b"a" * part_size


def abort_drops_every_part(store: WeightStore, part_size: int) -> None:
    upload = store.start_upload(KEY, [part_size, 1])
    store.put_part(KEY, upload, 1, io.BytesIO(b"a" * part_size))
    store.abort_upload(KEY, upload)
    store.abort_upload(KEY, upload)  # twice is fine
    with pytest.raises(ObjectNotFound):
        store.uploaded_parts(KEY, upload)
    with pytest.raises(ObjectNotFound):
        store.put_part(KEY, upload, 2, io.BytesIO(b"b"))
    assert not store.exists(KEY)


def an_upload_belongs_to_its_key(store: WeightStore, part_size: int) -> None:
    upload = store.start_upload(KEY, [1])
    with pytest.raises(ObjectNotFound):
        store.put_part("updates/7/other.safetensors", upload, 1, io.BytesIO(b"a"))
    with pytest.raises(ObjectNotFound):
        store.uploaded_parts(KEY, "0" * 32)
    store.abort_upload(KEY, upload)


def an_oversized_part_is_refused_and_not_kept(store: WeightStore, part_size: int) -> None:
    upload = store.start_upload(KEY, [part_size])
    with pytest.raises(InvalidWeights):
        store.put_part(KEY, upload, 1, io.BytesIO(b"a" * (part_size + 1)), max_bytes=part_size)
    assert store.uploaded_parts(KEY, upload) == []
    store.abort_upload(KEY, upload)


CONTRACT = [
    parts_join_in_order_whatever_order_they_arrive,
    a_part_sent_again_replaces_the_first,
    completion_refuses_missing_or_altered_parts,
    a_completed_upload_cannot_complete_again,
    abort_drops_every_part,
    an_upload_belongs_to_its_key,
    an_oversized_part_is_refused_and_not_kept,
]
