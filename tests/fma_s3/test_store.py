"""S3WeightStore on SeaweedFS's S3 gateway (moto's with ``-m moto_s3``): objects, multipart uploads,
presigned URLs, encryption."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time

import pytest
import requests
from botocore.exceptions import ClientError, EndpointConnectionError

from fma_core.errors import ConfigurationError, InvalidKey, InvalidWeights, ObjectNotFound, StoreUnavailable
from fma_s3 import S3WeightStore
from fma_s3.store import MIN_PART_SIZE, PARTS_IN_FLIGHT

from ..fma_core.multipart_contract import CONTRACT, KEY
from .conftest import ON_MOTO, client

PART = MIN_PART_SIZE


class Trickle(io.RawIOBase):
    """A non-seekable stream that hands out at most ``step`` bytes per read, like a socket."""

    def __init__(self, data: bytes, step: int = 1_000_003) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._step, len(self._data))
        buffer[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


def pending_uploads(s3, bucket: str) -> list[str]:
    return [upload["Key"] for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def object_keys(s3, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
def test_multipart_contract(store, check):
    check(store, PART)


def test_put_open_exists_delete_under_the_prefix(store, s3, bucket):
    data = os.urandom(300_000)
    stored = store.put("updates/1/a.safetensors", io.BytesIO(data))
    assert (stored.key, stored.size, stored.sha256) == (
        "updates/1/a.safetensors",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert object_keys(s3, bucket) == ["fma/updates/1/a.safetensors"]
    assert store.exists("updates/1/a.safetensors")
    with store.open("updates/1/a.safetensors") as file:
        assert file.read() == data
    store.delete("updates/1/a.safetensors")
    store.delete("updates/1/a.safetensors")  # removing a missing key is not an error
    assert not store.exists("updates/1/a.safetensors")
    with pytest.raises(ObjectNotFound):
        store.open("updates/1/a.safetensors")
    with pytest.raises(ObjectNotFound):
        store.open_weights("updates/1/a.safetensors")


def test_keys_that_could_escape_the_prefix_are_refused(store):
    for key in ("../outside", "/absolute", "updates/../../x", ""):
        with pytest.raises(InvalidKey):
            store.put(key, io.BytesIO(b"x"))
        with pytest.raises(InvalidKey):
            store.open(key)


def test_put_streams_a_large_object_as_a_multipart_upload(store, s3, bucket):
    data = os.urandom(2 * PART + 12_345)
    stored = store.put("aggregates/big.safetensors", Trickle(data))  # short reads, no seek, no length
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    head = s3.head_object(Bucket=bucket, Key="fma/aggregates/big.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # S3's ETag of an object joined from 3 parts
    with store.open("aggregates/big.safetensors") as file:
        assert file.read() == data
    assert pending_uploads(s3, bucket) == []


def test_put_sends_a_bounded_number_of_parts_at_once_and_a_failed_part_leaves_nothing(store, s3, bucket):
    data = os.urandom(7 * PART + 1)
    sending = most = 0
    lock = threading.Lock()
    parts_seen = []

    def started(**kwargs) -> None:
        nonlocal sending, most
        with lock:
            sending += 1
            most = max(most, sending)

    def over(**kwargs) -> None:
        nonlocal sending
        with lock:
            sending -= 1

    store.client.meta.events.register("before-call.s3.UploadPart", started)
    store.client.meta.events.register("after-call.s3.UploadPart", over)
    stored = store.put("aggregates/big.safetensors", io.BytesIO(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    with store.open("aggregates/big.safetensors") as file:
        assert file.read() == data
    assert 1 <= most <= PARTS_IN_FLIGHT

    def fail_part_3(params, **kwargs) -> None:
        parts_seen.append(params["PartNumber"])
        if params["PartNumber"] == 3:
            raise ConnectionResetError("the gateway went away")

    store.client.meta.events.register("provide-client-params.s3.UploadPart", fail_part_3)
    threads = threading.active_count()
    with pytest.raises(ConnectionResetError):
        store.put("aggregates/other.safetensors", io.BytesIO(data))
    assert 3 in parts_seen
    assert object_keys(s3, bucket) == ["fma/aggregates/big.safetensors"]
    assert pending_uploads(s3, bucket) == []  # aborted once every part sent was over
    assert threading.active_count() <= threads


@pytest.mark.parametrize("size", [1000, 2 * PART + 1], ids=["one-put", "multipart"])
def test_put_over_max_bytes_leaves_nothing(store, s3, bucket, size):
    with pytest.raises(InvalidWeights, match="larger than the limit"):
        store.put("updates/1/big.safetensors", io.BytesIO(os.urandom(size)), max_bytes=size - 1)
    assert object_keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []
    stored = store.put("updates/1/big.safetensors", io.BytesIO(b"x" * 10), max_bytes=10)  # at the limit
    assert stored.size == 10


def test_open_is_a_seekable_stream(store):
    data = os.urandom(3 * 1024 * 1024)
    store.put("updates/1/a.safetensors", io.BytesIO(data))
    with store.open("updates/1/a.safetensors") as file:
        assert file.seekable()
        assert file.seek(0, io.SEEK_END) == len(data)
        assert file.seek(1_000_000) == 1_000_000
        assert file.read(10) == data[1_000_000:1_000_010]
        assert file.read(10) == data[1_000_010:1_000_020]  # continues the same GET
        file.seek(-5, io.SEEK_END)
        assert file.read(100) == data[-5:]
        assert file.read(100) == b""
        file.seek(0)
        assert file.read() == data


def test_presigned_part_urls_take_parts_from_plain_http(store, s3, bucket):
    data = os.urandom(PART + 999)
    upload = store.start_upload(KEY, [PART, 999])
    etags = {}
    for number, chunk in ((2, data[PART:]), (1, data[:PART])):
        url = store.presigned_part_url(KEY, upload, number, expires_in=600)
        response = requests.put(url, data=chunk, timeout=30)
        assert response.status_code == 200, response.text
        etags[number] = response.headers["ETag"]  # quoted, as S3 sends it
    listed = store.uploaded_parts(KEY, upload)
    assert [(p.number, p.size, f'"{p.etag}"') for p in listed] == [
        (1, PART, etags[1]),
        (2, 999, etags[2]),
    ]
    store.complete_upload(KEY, upload, listed)
    assert s3.get_object(Bucket=bucket, Key=f"fma/{KEY}")["Body"].read() == data
    with pytest.raises(ObjectNotFound):
        store.presigned_part_url("updates/7/other.safetensors", upload, 1, expires_in=600)


def test_completion_takes_etags_as_the_part_puts_returned_them(store):
    upload = store.start_upload(KEY, [100])
    part = store.put_part(KEY, upload, 1, io.BytesIO(b"z" * 100))
    quoted = type(part)(number=1, size=100, etag=f'"{part.etag}"')
    store.complete_upload(KEY, upload, [quoted])
    with store.open(KEY) as joined:
        assert joined.read() == b"z" * 100


def test_an_upload_s3_would_refuse_to_join_is_refused_at_its_start(store):
    with pytest.raises(InvalidWeights, match="at least"):
        store.start_upload(KEY, [100, 100])


def test_completion_refuses_parts_s3_cannot_join(store):
    upload = store.start_upload(KEY, [PART, 100])
    store.put_part(KEY, upload, 1, io.BytesIO(b"a" * 100))  # a client sent less than S3's minimum for part 1
    store.put_part(KEY, upload, 2, io.BytesIO(b"b" * 100))
    with pytest.raises(InvalidWeights, match="at least"):
        store.complete_upload(KEY, upload, store.uploaded_parts(KEY, upload))
    assert not store.exists(KEY)
    store.abort_upload(KEY, upload)


def test_a_presigned_download_url_serves_the_object(store):
    data = os.urandom(50_000)
    store.put("aggregates/a.safetensors", io.BytesIO(data))
    response = requests.get(
        store.presigned_download_url("aggregates/a.safetensors", expires_in=60), timeout=30
    )
    assert response.status_code == 200
    assert response.content == data


@pytest.mark.parametrize("size", [1000, PART + 1], ids=["one-put", "multipart"])
def test_every_write_is_encrypted_with_s3_managed_keys_by_default(store, s3, bucket, size):
    store.put("updates/1/a.safetensors", io.BytesIO(os.urandom(size)))
    upload = store.start_upload("updates/1/b.safetensors", [10])
    store.complete_upload(
        "updates/1/b.safetensors",
        upload,
        [store.put_part("updates/1/b.safetensors", upload, 1, io.BytesIO(b"b" * 10))],
    )
    for key in ("fma/updates/1/a.safetensors", "fma/updates/1/b.safetensors"):
        assert s3.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


@ON_MOTO  # KMS keys: AWS's, served by moto
def test_writes_use_the_kms_key_when_one_is_given(make_store, s3_endpoint, s3, bucket):
    key_id = client(s3_endpoint, "kms").create_key(Description="fma weights")["KeyMetadata"]["KeyId"]
    store = make_store(encryption="aws:kms", kms_key_id=key_id)
    store.put("updates/1/small.safetensors", io.BytesIO(b"s" * 1000))
    store.put("updates/1/large.safetensors", io.BytesIO(os.urandom(PART + 1)))
    upload = store.start_upload("updates/1/parts.safetensors", [10])
    part = store.put_part("updates/1/parts.safetensors", upload, 1, io.BytesIO(b"p" * 10))
    store.complete_upload("updates/1/parts.safetensors", upload, [part])
    for name in ("small", "large", "parts"):
        head = s3.head_object(Bucket=bucket, Key=f"fma/updates/1/{name}.safetensors")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"].endswith(key_id)


def test_encryption_none_asks_for_none(make_store, s3, bucket):
    """For a server without server-side encryption: no SSE header on any write."""
    store = make_store(encryption="none")
    store.put("updates/1/small.safetensors", io.BytesIO(b"s" * 1000))
    store.put("updates/1/large.safetensors", io.BytesIO(os.urandom(PART + 1)))
    upload = store.start_upload("updates/1/parts.safetensors", [10])
    part = store.put_part("updates/1/parts.safetensors", upload, 1, io.BytesIO(b"p" * 10))
    store.complete_upload("updates/1/parts.safetensors", upload, [part])
    for name in ("small", "large", "parts"):
        assert "ServerSideEncryption" not in s3.head_object(
            Bucket=bucket, Key=f"fma/updates/1/{name}.safetensors"
        )


def test_uploaded_parts_reads_every_page_of_the_listing(store, s3, bucket):
    """S3 lists 1,000 parts a page: an upload of more is read to its last part."""
    upload = store.start_upload(KEY, [PART] * 1000 + [1])  # only listed here, never joined
    for number in range(1, 1002):  # sent as a client sends them, straight to S3
        s3.upload_part(
            Bucket=bucket, Key=f"fma/{KEY}", UploadId=upload.rpartition("~")[0], PartNumber=number, Body=b"p"
        )
    listed = store.uploaded_parts(KEY, upload)
    assert [part.number for part in listed] == list(range(1, 1002))
    store.abort_upload(KEY, upload)


def test_a_part_sent_again_in_a_later_second_is_the_one_listed_and_joined(store, s3, bucket):
    """SeaweedFS keeps every copy of a re-sent part until completion, listed to the second: the
    latest counts (S3 keeps only it). Within one second, the contract's test covers it."""
    upload = store.start_upload(KEY, [PART, 3])
    store.put_part(KEY, upload, 1, io.BytesIO(b"a" * PART))
    short = store.put_part(KEY, upload, 2, io.BytesIO(b"c"))  # cut short
    (first_listing,) = [p for p in store.uploaded_parts(KEY, upload) if p.number == 2]
    assert first_listing.size == 1
    listed_at = s3.list_parts(Bucket=bucket, Key=f"fma/{KEY}", UploadId=upload.rpartition("~")[0])
    written = max(p["LastModified"] for p in listed_at["Parts"]).timestamp()
    deadline = time.monotonic() + 30
    while time.time() < written + 1.05:  # the listing's clock is to the second
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again = store.put_part(KEY, upload, 2, io.BytesIO(b"d" * 3))
    listed = store.uploaded_parts(KEY, upload)
    assert [(p.number, p.size) for p in listed] == [(1, PART), (2, 3)]
    assert listed[1].etag == again.etag != short.etag
    store.complete_upload(KEY, upload, listed)
    with store.open(KEY) as file:
        assert file.read() == b"a" * PART + b"ddd"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"part_size": MIN_PART_SIZE - 1}, "part_size must be between"),
        ({"encryption": "rot13"}, "encryption must be one of"),
        ({"kms_key_id": "k-1"}, "needs encryption='aws:kms'"),
        ({"addressing_style": "sideways"}, "addressing_style must be one of"),
        ({"prefix": "fma/../x/"}, "'..' segment"),
        ({"read_ahead_bytes": -1}, "read_ahead_bytes must be a whole number"),
        ({"read_concurrency": 0}, "read_concurrency must be a whole number ≥ 1"),
        ({"read_concurrency": True}, "read_concurrency must be a whole number ≥ 1"),
    ],
)
def test_unusable_options_are_refused(options, message):
    with pytest.raises(ConfigurationError, match=message):
        S3WeightStore("bucket", **options)


def test_the_prefix_is_optional_and_normalized(make_store, s3, bucket):
    assert make_store(prefix="").prefix == ""
    assert make_store(prefix="/team/fma").prefix == "team/fma/"
    make_store(prefix="").put("updates/1/a.safetensors", io.BytesIO(b"a"))
    assert object_keys(s3, bucket) == ["updates/1/a.safetensors"]


def _answered(status: int, code: str):
    def answer(**kwargs):
        raise ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "S3")

    return answer


def _unreachable(**kwargs):
    raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")


@pytest.mark.parametrize(
    "failure",
    [
        _answered(503, "SlowDown"),
        _answered(500, "InternalError"),
        _answered(403, "AccessDenied"),
        _unreachable,
    ],
    ids=["503", "500", "403", "connection"],
)
def test_a_request_s3_fails_is_the_stores_failure_said_in_fma_cores_terms(store, failure):
    key = "updates/e/1.safetensors"
    store.put(key, io.BytesIO(b"x" * 100))
    store.client.meta.events.register("before-call.s3", failure)
    calls = {
        "open_weights": lambda: store.open_weights(key),
        "open": lambda: store.open(key),
        "exists": lambda: store.exists(key),
        "put": lambda: store.put("other", io.BytesIO(b"y")),
        "delete": lambda: store.delete(key),
        "list_objects": lambda: list(store.list_objects("updates/")),
    }
    for name, call in calls.items():
        with pytest.raises(StoreUnavailable) as raised:
            call()
        assert not isinstance(raised.value, InvalidWeights | ObjectNotFound), name
        assert isinstance(raised.value.__cause__, ClientError | EndpointConnectionError), name


def test_a_read_of_an_open_object_that_fails_is_the_stores_failure(store):
    key = "updates/e/1.safetensors"
    store.put(key, io.BytesIO(b"x" * 100_000))
    with store.open(key) as stream:
        store.client.meta.events.register("before-call.s3.GetObject", _unreachable)
        with pytest.raises(StoreUnavailable):
            stream.read()
    store.client.meta.events.unregister("before-call.s3.GetObject", _unreachable)
    missing = "updates/e/none.safetensors"
    with pytest.raises(ObjectNotFound):  # what is the data's stays the data's
        store.open_weights(missing)
    assert not store.exists(missing)
