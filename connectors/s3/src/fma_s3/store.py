"""``S3WeightStore``: weights in an S3 bucket (AWS or any S3-compatible server), read by byte range."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO, NamedTuple

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from fma_core.connectors import StoredObject, UploadedPart, WeightStore, check_key
from fma_core.connectors.weight_store import ListedObject, ListedUpload
from fma_core.errors import ConfigurationError, InvalidKey, InvalidWeights, ObjectNotFound
from fma_core.weights import SafetensorsReader
from fma_s3.config import options_from_env
from fma_s3.errors import error_code, is_missing, translated
from fma_s3.read_ahead import DEFAULT_BUDGET, DEFAULT_CONCURRENCY, ReadAhead
from fma_s3.reading import ObjectStream, ObjectVersion, RangedSource

MIN_PART_SIZE = 5 * 1024**2
"""S3's smallest part, for every part of a multipart upload but the last."""
MAX_PART_SIZE = 5 * 1024**3
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 16 * 1024**2
ENCRYPTIONS = ("AES256", "aws:kms", "none")
ADDRESSING_STYLES = ("auto", "path", "virtual")

PARTS_IN_FLIGHT = 4
"""Parts of one ``put`` sent at once (a round's aggregate, a shard's record): S3 and SeaweedFS
write several parts at once faster than one after another. Memory: this many parts and the one
being read, ``part_size`` each."""
CALLER_CONNECTIONS = 10
"""Connections kept for the callers' own requests (botocore's default pool), besides the read-ahead's."""

_SPOOL_IN_MEMORY = 8 * 1024**2
_CHUNK = 1 << 20
# S3 refuses a completion with these codes when the parts themselves are wrong.
_BAD_PARTS = frozenset({"EntityTooSmall", "InvalidPart", "InvalidPartOrder", "MalformedXML"})


class S3WeightStore(WeightStore):
    """Objects under ``prefix`` in ``bucket``, written with server-side encryption.

    - Writes are atomic, as S3 makes every PUT and completed multipart upload: readers see the
      whole object or none. ``put`` sends a stream of any length as a multipart upload of
      ``part_size`` parts (one PUT when it fits in one part), hashing it on the way, and aborts
      the upload when the stream is over ``max_bytes``.
    - ``open_weights`` reads the safetensors header with one small ranged GET, then the tensors'
      blocks through the store's read-ahead (``RangedSource``, ``fma_s3.read_ahead``): up to
      ``read_concurrency`` GETs of up to 8 MiB in flight, fetched ahead of the blocks read, holding
      at most ``read_ahead_bytes`` over all open objects. An aggregator holds blocks and that
      budget, never an update. The client's connection pool has room for the read-ahead's GETs
      and ``CALLER_CONNECTIONS`` more.
    - Multipart uploads are S3's. Clients PUT parts straight to presigned part URLs; completion
      checks the parts against S3's listing; the caller reads the joined object once to
      measure it. An upload id names its key (``<S3 upload id>~<tag>``): S3 refuses a part
      sent to another key's upload, but not every S3-compatible server does, so the store checks.
    - Every write asks for encryption at rest: ``encryption="AES256"`` (S3-managed keys, the default)
      or ``"aws:kms"`` with ``kms_key_id`` (the bucket's default KMS key when None). ``"none"``
      asks for nothing, for an S3-compatible server without server-side encryption (or one that
      encrypts its disks itself): SeaweedFS serves SSE-S3 only once given a key-encryption key,
      and without one fails every encrypted write with a 500.

    ``endpoint_url`` points at an S3-compatible server (SeaweedFS, MinIO, Ceph, moto...), most of which want
    ``addressing_style="path"``; ``client_config`` is merged into the botocore ``Config`` (timeouts,
    retries, checksum behaviour). Credentials and, when ``region`` is None, the region come from
    boto3's usual chain (environment, profile, instance or Lambda role).
    """

    min_part_bytes = MIN_PART_SIZE

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        encryption: str = "AES256",
        kms_key_id: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        addressing_style: str = "auto",
        read_ahead_bytes: int = DEFAULT_BUDGET,
        read_concurrency: int = DEFAULT_CONCURRENCY,
        client_config: Config | None = None,
    ) -> None:
        if not isinstance(bucket, str) or not bucket:
            raise ConfigurationError("an S3 weight store needs a bucket name")
        if encryption not in ENCRYPTIONS:
            raise ConfigurationError(
                f"encryption must be one of {', '.join(ENCRYPTIONS)}, not {encryption!r}"
            )
        if kms_key_id and encryption != "aws:kms":
            raise ConfigurationError("a KMS key id needs encryption='aws:kms'")
        if isinstance(part_size, bool) or not isinstance(part_size, int):
            raise ConfigurationError(f"part_size must be a whole number of bytes, not {part_size!r}")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ConfigurationError(
                f"part_size must be between S3's limits of {MIN_PART_SIZE:,} and {MAX_PART_SIZE:,} bytes, "
                f"not {part_size:,}"
            )
        if addressing_style not in ADDRESSING_STYLES:
            raise ConfigurationError(
                f"addressing_style must be one of {', '.join(ADDRESSING_STYLES)}, not {addressing_style!r}"
            )
        if not _whole(read_ahead_bytes, at_least=0):
            raise ConfigurationError(
                f"read_ahead_bytes must be a whole number of bytes (0: no read-ahead), not {read_ahead_bytes!r}"
            )
        if not _whole(read_concurrency, at_least=1):
            raise ConfigurationError(f"read_concurrency must be a whole number ≥ 1, not {read_concurrency!r}")
        self.bucket = bucket
        self.prefix = _prefix(prefix)
        self.read_ahead = ReadAhead(budget=read_ahead_bytes, concurrency=read_concurrency)
        self.part_size = part_size
        self._encryption = {} if encryption == "none" else {"ServerSideEncryption": encryption}
        if kms_key_id:
            self._encryption["SSEKMSKeyId"] = kms_key_id
        config = Config(
            signature_version="s3v4",  # presigned URLs in every region
            s3={"addressing_style": addressing_style},
            retries={"mode": "standard"},
            max_pool_connections=read_concurrency + CALLER_CONNECTIONS,
        )
        self.client = boto3.session.Session().client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            config=config.merge(client_config) if client_config else config,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3WeightStore:
        """The store the ``FMA_S3_*`` variables describe (see ``fma_s3.config``)."""
        return cls(**options_from_env(os.environ if environ is None else environ))

    @translated
    def put(self, key: str, stream: BinaryIO, *, max_bytes: int | None = None) -> StoredObject:
        name = self._name(key)
        digest = hashlib.sha256()
        size = 0

        def next_part() -> bytes:
            nonlocal size
            data = _read_up_to(stream, self.part_size)
            size += len(data)
            if max_bytes is not None and size > max_bytes:
                raise InvalidWeights(f"upload is larger than the limit of {max_bytes:,} bytes")
            digest.update(data)
            return data

        data = next_part()
        if len(data) < self.part_size:  # the whole object fits in one part: one PUT
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data, **self._encryption)
            return StoredObject(key=key, size=size, sha256=digest.hexdigest())
        upload_id = self._create_upload(name)
        try:
            # the next part is read (and hashed) while up to PARTS_IN_FLIGHT are sent; leaving the
            # block waits for every part sent, so an abort never races with an upload of a part
            with ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="fma-s3-write") as pool:
                sending: deque[Future[dict[str, Any]]] = deque()
                parts = []
                number = 0
                while data:
                    number += 1
                    if number > MAX_PARTS:
                        raise InvalidWeights(
                            f"upload is larger than S3's {MAX_PARTS:,} parts of {self.part_size:,} bytes"
                        )
                    if len(sending) == PARTS_IN_FLIGHT:
                        parts.append(sending.popleft().result())
                    sending.append(pool.submit(self._send_part, name, upload_id, number, data))
                    data = next_part()
                parts += [part.result() for part in sending]
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self._abort(name, upload_id)
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    @translated
    def open(self, key: str) -> BinaryIO:
        return ObjectStream(ObjectVersion.head(self.client, self.bucket, self._name(key)))

    @translated
    def open_weights(self, key: str, *, max_bytes: int | None = None) -> SafetensorsReader:
        return SafetensorsReader(
            RangedSource.open(self.client, self.bucket, self._name(key), self.read_ahead),
            max_bytes=max_bytes,
        )

    @translated
    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as error:
            if is_missing(error):
                return False
            raise
        return True

    @translated
    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def presigned_download_url(self, key: str, *, expires_in: int) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._name(key)}, ExpiresIn=expires_in
        )

    @translated
    def start_upload(self, key: str, part_sizes: Sequence[int]) -> str:
        """S3 keeps the parts apart until it joins them, so the sizes serve only to refuse at once an
        upload S3 would refuse at the end: a part before the last one smaller than S3's minimum."""
        small = [n for n, size in enumerate(part_sizes[:-1], 1) if size < MIN_PART_SIZE]
        if not part_sizes or small:
            raise InvalidWeights(
                f"an upload to S3 needs parts of at least {MIN_PART_SIZE:,} bytes but the last, "
                f"not {list(part_sizes)!r}"
            )
        name = self._name(key)
        return _bind(name, self._create_upload(name))

    @translated
    def put_part(
        self, key: str, upload_id: str, number: int, stream: BinaryIO, *, max_bytes: int | None = None
    ) -> UploadedPart:
        name = self._name(key)
        s3_upload_id = _unbind(name, upload_id)
        _check_number(number)
        with _upload_errors(key, upload_id):
            # S3 answers a part for an ended upload with NoSuchUpload, but some S3-compatible servers
            # (moto) fail with a 500: one small ListParts first gives the same answer everywhere.
            self.client.list_parts(Bucket=self.bucket, Key=name, UploadId=s3_upload_id, MaxParts=1)
            # S3 needs a part's length before its bytes: spool it (in memory up to 8 MiB, then on
            # disk), which also refuses an oversized part before anything is sent.
            with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
                size = _copy(stream, spool, max_bytes=max_bytes)
                spool.seek(0)
                sent = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=s3_upload_id,
                    PartNumber=number,
                    Body=spool,
                    ContentLength=size,
                )
        return UploadedPart(number=number, size=size, etag=_etag(sent["ETag"]))

    @translated
    def uploaded_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        """The parts received, one per number: its latest copy listed (``_latest``, ``_counted``)."""
        copies = self._listed_copies(key, upload_id)
        return [_counted(number, _latest(copies[number])) for number in sorted(copies)]

    @translated
    def complete_upload(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        """Join the parts once each matches the listing (ETags quoted or not); S3 joins them itself.

        Where the listing holds several latest copies of a part of the caller's size (a server that
        keeps every copy of a re-sent part, listed to the second: ``_latest``), the completion names
        them all, and the server joins the newest it holds (SeaweedFS orders them to the
        nanosecond). S3 lists one copy per part, so it is sent exactly the caller's parts.
        """
        name = self._name(key)
        s3_upload_id = _unbind(name, upload_id)
        if not parts or [part.number for part in parts] != list(range(1, len(parts) + 1)):
            raise InvalidWeights("an upload completes with its parts numbered 1, 2, ... n, in order")
        copies = self._listed_copies(key, upload_id)
        named = []
        for part in parts:
            alike = [copy.etag for copy in _latest(copies.get(part.number, [])) if copy.size == part.size]
            if _etag(part.etag) not in alike:
                raise InvalidWeights(f"part {part.number} was not received as listed")
            named += [{"PartNumber": part.number, "ETag": etag} for etag in alike]
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=s3_upload_id, MultipartUpload={"Parts": named}
            )
        except ClientError as error:
            if is_missing(error):
                raise _no_upload(key, upload_id) from None
            if error_code(error) in _BAD_PARTS:
                message = error.response.get("Error", {}).get("Message", error_code(error))
                raise InvalidWeights(
                    f"S3 refused to join the parts ({message}); every part but the last must be at least "
                    f"{MIN_PART_SIZE:,} bytes"
                ) from None
            raise

    def _listed_copies(self, key: str, upload_id: str) -> dict[int, list[_Copy]]:
        """Every copy ListParts shows of each part number, from every page (a copy a page lists again
        counts once)."""
        name = self._name(key)
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=name, UploadId=_unbind(name, upload_id)
        )
        copies: dict[int, dict[_Copy, None]] = {}
        with _upload_errors(key, upload_id):
            for page in pages:
                for part in page.get("Parts", []):
                    copy = _Copy(part["Size"], _etag(part["ETag"]), part["LastModified"].timestamp())
                    copies.setdefault(part["PartNumber"], {})[copy] = None
        return {number: list(found) for number, found in copies.items()}

    @translated
    def abort_upload(self, key: str, upload_id: str) -> None:
        name = self._name(key)
        try:
            s3_upload_id = _unbind(name, upload_id)
        except ObjectNotFound:
            return
        self._abort(name, s3_upload_id)

    def presigned_part_url(self, key: str, upload_id: str, number: int, *, expires_in: int) -> str:
        name = self._name(key)
        s3_upload_id = _unbind(name, upload_id)
        _check_number(number)
        return self.client.generate_presigned_url(
            "upload_part",
            Params={"Bucket": self.bucket, "Key": name, "UploadId": s3_upload_id, "PartNumber": number},
            ExpiresIn=expires_in,
        )

    @translated
    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        """One ListObjectsV2 page (1,000 keys) at a time, under this store's prefix only."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                key = self._key(item["Key"], prefix)
                if key is not None:
                    yield ListedObject(key=key, size=item["Size"], modified=item["LastModified"].timestamp())

    @translated
    def list_uploads(self, prefix: str) -> Iterator[ListedUpload]:
        """One ListMultipartUploads page at a time. S3 dates an upload by its start (``Initiated``), the
        only time it gives."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                key = self._key(upload["Key"], prefix)
                if key is not None:
                    yield ListedUpload(
                        key=key,
                        upload_id=_bind(upload["Key"], upload["UploadId"]),
                        modified=upload["Initiated"].timestamp(),
                    )

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _key(self, name: str, prefix: str) -> str | None:
        """The key of the S3 object ``name`` if it is one of this store's under ``prefix`` (S3 listed it
        by prefix, but not every S3-compatible server filters), else None."""
        if not name.startswith(self.prefix + prefix):
            return None
        try:
            return check_key(name[len(self.prefix) :])
        except InvalidKey:
            return None

    def _send_part(self, name: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        sent = self.client.upload_part(
            Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": sent["ETag"]}

    def _create_upload(self, name: str) -> str:
        created = self.client.create_multipart_upload(Bucket=self.bucket, Key=name, **self._encryption)
        return created["UploadId"]

    def _abort(self, name: str, s3_upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=s3_upload_id)
        except ClientError as error:
            if not is_missing(error):
                raise


class _Copy(NamedTuple):
    """One copy of a part as ListParts shows it: size, ETag (unquoted), when written (to the second)."""

    size: int
    etag: str
    modified: float


def _latest(copies: Sequence[_Copy]) -> list[_Copy]:
    """The copies of a part listed in its latest second.

    S3 keeps the last copy of a part sent again; SeaweedFS keeps every copy until the upload
    completes and lists them all, dated to the second. The latest copy is the part: one, unless
    several were sent within that second.
    """
    newest = max((copy.modified for copy in copies), default=None)
    return [copy for copy in copies if copy.modified == newest]


def _counted(number: int, latest: Sequence[_Copy]) -> UploadedPart:
    """The part among its latest copies: the largest (a copy cut short is smaller, and a resuming
    client sends a part listed short again); copies of that size alike are told apart when the
    upload completes (``complete_upload``)."""
    chosen = max(latest, key=lambda copy: (copy.size, copy.etag))
    return UploadedPart(number=number, size=chosen.size, etag=chosen.etag)


def _whole(value: object, *, at_least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= at_least


def _prefix(prefix: str) -> str:
    """``"fma"`` or ``"fma/"`` → ``"fma/"``; empty stays empty. Terraform's ``s3_prefix`` ends in '/'."""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    if any(segment in {"", ".", ".."} for segment in stripped.split("/")):
        raise ConfigurationError(f"S3 prefix {prefix!r} has an empty, '.' or '..' segment")
    return stripped + "/"


def _bind(name: str, s3_upload_id: str) -> str:
    return f"{s3_upload_id}~{_tag(name, s3_upload_id)}"


def _unbind(name: str, upload_id: str) -> str:
    """The S3 upload id inside ``upload_id``, if it was made for the object ``name``."""
    s3_upload_id, _, tag = str(upload_id).rpartition("~")
    if not s3_upload_id or tag != _tag(name, s3_upload_id):
        raise _no_upload(name, upload_id)
    return s3_upload_id


def _tag(name: str, s3_upload_id: str) -> str:
    return hashlib.sha256(f"{name}\0{s3_upload_id}".encode()).hexdigest()[:16]


def _no_upload(key: str, upload_id: str) -> ObjectNotFound:
    return ObjectNotFound(f"no upload {upload_id!r} in progress for {key!r}")


@contextmanager
def _upload_errors(key: str, upload_id: str) -> Iterator[None]:
    """S3's NoSuchUpload (unknown, completed or aborted upload) as ObjectNotFound."""
    try:
        yield
    except ClientError as error:
        if is_missing(error):
            raise _no_upload(key, upload_id) from None
        raise


def _check_number(number: int) -> None:
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_PARTS:
        raise InvalidWeights(f"part numbers go from 1 to {MAX_PARTS:,}, not {number!r}")


def _etag(etag: str) -> str:
    """S3 quotes ETags (``"9b2c..."``); parts are compared and listed without the quotes."""
    return etag.strip('"')


def _read_up_to(stream: BinaryIO, count: int) -> bytes:
    """``count`` bytes, fewer only at the end of the stream (a socket may return less per read)."""
    chunks = []
    remaining = count
    while remaining and (chunk := stream.read(remaining)):
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _copy(stream: BinaryIO, target: BinaryIO, *, max_bytes: int | None) -> int:
    size = 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise InvalidWeights(f"part is larger than the limit of {max_bytes:,} bytes")
        target.write(chunk)
    return size
