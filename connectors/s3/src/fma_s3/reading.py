"""Reading S3 objects without holding them: a seekable stream for downloads, byte ranges for tensors.

Both pin the object's version when they open it: every later GET carries ``If-Match`` with the
ETag seen first, so an object replaced while it is read fails loudly (InvalidWeights) instead of
returning bytes of two different versions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError

from fma_core.errors import InvalidWeights, ObjectNotFound
from fma_core.weights import ByteSource
from fma_s3.errors import error_code, is_missing, translated

if TYPE_CHECKING:
    from fma_s3.read_ahead import ReadAhead

HEADER_PREFETCH = 64 * 1024
"""Bytes of the first GET of ``open_weights``: the length and the JSON header of most models."""

READ_ATTEMPTS = 3
"""GETs a block of a tensor may take when its body breaks while streaming."""

_CHUNK = 1 << 20
# The connection broke, or ended early, while a body streamed (botocore raises no retry for these).
_BROKEN_BODY = (HTTPClientError, IncompleteReadError)


@dataclass(frozen=True)
class ObjectVersion:
    """One object as it was when it was opened: its location, ETag and size."""

    client: Any
    bucket: str
    key: str
    etag: str
    size: int

    @classmethod
    @translated
    def head(cls, client: Any, bucket: str, key: str) -> ObjectVersion:
        """The object's current version; ObjectNotFound if there is none."""
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if is_missing(error):
                raise ObjectNotFound(f"no weights stored under {key!r}") from None
            raise
        return cls(client, bucket, key, head["ETag"], head["ContentLength"])

    @translated
    def get(self, first: int, count: int) -> Any:
        """The body of a GET of ``count`` bytes from ``first``, checked to be exactly that range."""
        try:
            response = self.client.get_object(
                Bucket=self.bucket,
                Key=self.key,
                Range=f"bytes={first}-{first + count - 1}",
                IfMatch=self.etag,
            )
        except ClientError as error:
            if error_code(error) in {"PreconditionFailed", "NoSuchKey", "InvalidRange"}:
                raise InvalidWeights(
                    f"object {self.key!r} changed or was removed while it was read"
                ) from None
            raise
        if response["ContentLength"] != count:  # an endpoint that ignores Range sends the whole object
            response["Body"].close()
            raise OSError(
                f"asked the S3 endpoint for {count:,} bytes of {self.key!r} from {first:,}, "
                f"it answered with {response['ContentLength']:,}"
            )
        return response["Body"]

    @translated
    def read_into(self, first: int, view: memoryview) -> None:
        """Fill ``view`` with the bytes from ``first``: one GET, read straight into the buffer.

        botocore retries a request that fails before its answer, not a body that breaks while it
        streams; here a broken body is resumed where it broke (``READ_ATTEMPTS`` GETs at most), so a
        network blip does not make a round quarantine a good update. The body is read 1 MiB at a
        time: urllib3's ``readinto`` reads into a temporary ``bytes`` of the size asked first, which
        for a whole 8 MiB chunk would double the memory of every GET in flight.
        """
        done = attempts = 0
        while done < len(view):
            attempts += 1
            body = self.get(first + done, len(view) - done)
            try:
                while done < len(view):
                    got = body.readinto(view[done : done + _CHUNK])
                    if not got:
                        raise InvalidWeights(f"object {self.key!r} ended while it was read")
                    done += got
            except _BROKEN_BODY:
                if attempts == READ_ATTEMPTS:
                    raise
            finally:
                body.close()


class RangedSource(ByteSource):
    """An object read by byte ranges, for ``SafetensorsReader``.

    The first GET fetches the first ``HEADER_PREFETCH`` bytes (the object's size and ETag come
    with it); the header is parsed from them (one more GET if it is longer) and checked against
    the size before any tensor is read. Tensor blocks come through the store's read-ahead
    (``fma_s3.read_ahead``): once the reads run forward, large GETs of the bytes after them are
    fetched in the background, within the store's memory budget; a read they do not cover is a
    GET of its own range straight into the caller's buffer. boto3 clients are thread-safe, so
    blocks are read from many threads without a lock.
    """

    def __init__(self, version: ObjectVersion, prefix: bytes, read_ahead: ReadAhead) -> None:
        self._version = version
        self._prefix = prefix
        self._prefetcher = read_ahead.prefetcher(version)
        self.size = version.size

    @classmethod
    @translated
    def open(cls, client: Any, bucket: str, key: str, read_ahead: ReadAhead) -> RangedSource:
        try:
            response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{HEADER_PREFETCH - 1}")
        except ClientError as error:
            if is_missing(error):
                raise ObjectNotFound(f"no weights stored under {key!r}") from None
            if error_code(error) == "InvalidRange":  # the object is empty: no byte 0 to start from
                return cls(ObjectVersion.head(client, bucket, key), b"", read_ahead)
            raise
        if response["ContentLength"] > HEADER_PREFETCH:  # an endpoint that ignores Range
            response["Body"].close()
            raise OSError(f"the S3 endpoint answered a ranged GET of {key!r} with the whole object")
        with response["Body"] as body:
            prefix = body.read()
        content_range = response.get("ContentRange")  # "bytes 0-65535/123456"
        size = int(content_range.rpartition("/")[2]) if content_range else len(prefix)
        return cls(ObjectVersion(client, bucket, key, response["ETag"], size), prefix, read_ahead)

    def read_bytes(self, offset: int, count: int) -> bytes:
        if offset + count <= len(self._prefix):
            return self._prefix[offset : offset + count]
        data = bytearray(count)
        self._version.read_into(offset, memoryview(data))
        return bytes(data)

    def read_array(self, offset: int, count: int, dtype: np.dtype, buffer: np.ndarray | None) -> np.ndarray:
        out = np.empty(count, dtype) if buffer is None else buffer[:count]
        self._prefetcher.read_into(offset, memoryview(out).cast("B"))
        return out

    def close(self) -> None:
        self._prefetcher.close()


class ObjectStream(io.RawIOBase):
    """The object as a read-only, seekable file (what ``WeightStore.open`` returns).

    Reads stream from one GET that runs from the current position to the end; a seek elsewhere
    drops it, and the next read starts a new one there. Nothing is buffered beyond the read.
    """

    def __init__(self, version: ObjectVersion) -> None:
        self._version = version
        self._position = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("seek on a closed S3 object stream")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._version.size}[whence]
        if base + offset < 0:
            raise ValueError(f"cannot seek to {base + offset}: before the start of the object")
        if base + offset != self._position:
            self._drop()
            self._position = base + offset
        return self._position

    @translated
    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("read from a closed S3 object stream")
        view = memoryview(buffer).cast("B")
        remaining = self._version.size - self._position
        if remaining <= 0 or not len(view):
            return 0
        if self._body is None:
            self._body = self._version.get(self._position, remaining)
        data = self._body.read(min(len(view), remaining))
        if not data:
            raise InvalidWeights(f"object {self._version.key!r} ended while it was read")
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._drop()
        super().close()

    def _drop(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
