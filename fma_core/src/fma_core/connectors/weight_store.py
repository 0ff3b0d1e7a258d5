"""``WeightStore``: where weight bytes live (a local directory, S3, ...), addressed by key."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from fma_core.errors import InvalidKey
from fma_core.weights import SafetensorsReader, open_weights

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

KEY_SPACES = ("aggregates/", "artifacts/", "secure/", "shards/", "updates/")
"""The first segment of every key FMA writes (see ``fma_core.rounds``, ``fma_core.shards`` and
fma-django's services and secure rounds): the sweep looks for unreferenced objects there and nowhere
else."""


@dataclass(frozen=True)
class StoredObject:
    """What ``put`` wrote: the key, its size and the SHA-256 of its bytes, measured while writing."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadedPart:
    """One received part of a multipart upload: its 1-based number, size and the store's ETag."""

    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class ListedObject:
    """An object found by ``list_objects``: its key, size, and when it was last written (epoch seconds)."""

    key: str
    size: int
    modified: float


@dataclass(frozen=True)
class ListedUpload:
    """A multipart upload not yet completed nor aborted: its key and id, and when it was last written
    to (S3: when it started; epoch seconds)."""

    key: str
    upload_id: str
    modified: float


@dataclass(frozen=True)
class Removed:
    """What a clean-up removed: how many things and how many bytes."""

    count: int = 0
    bytes: int = 0

    def __add__(self, other: Removed) -> Removed:
        return Removed(self.count + other.count, self.bytes + other.bytes)


class WeightStore(ABC):
    """Streams bytes in and out by key; never holds a whole object in memory.

    Large objects arrive as multipart uploads: ``start_upload`` with every part's size, then
    numbered parts in any order and in parallel (through ``put_part``, or straight from the client
    to a presigned part URL), then ``complete_upload`` joins them into the object, or
    ``abort_upload`` drops them. Parts received are listed by ``uploaded_parts``, so a broken
    upload resumes with the missing ones. Every part but the last has at least
    ``min_part_bytes`` (S3's rule).
    """

    min_part_bytes: int = 1

    @abstractmethod
    def put(self, key: str, stream: BinaryIO, *, max_bytes: int | None = None) -> StoredObject:
        """Store a stream under ``key`` atomically (all or nothing), measuring size and SHA-256.

        Raises InvalidWeights, leaving nothing behind, if the stream exceeds ``max_bytes``.
        """

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary stream of the object; ObjectNotFound if there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; removing a missing key is not an error."""

    def open_weights(self, key: str, *, max_bytes: int | None = None) -> SafetensorsReader:
        """The object as weights, read tensor by tensor (stores with ranged reads override this)."""
        return open_weights(self.open(key), max_bytes=max_bytes)

    def presigned_download_url(self, key: str, *, expires_in: int) -> str | None:
        """A URL a client can GET the object from directly, or None to stream it through the API."""
        return None

    @abstractmethod
    def start_upload(self, key: str, part_sizes: Sequence[int]) -> str:
        """Begin a multipart upload of ``key`` in parts of these sizes (part 1 first); returns its upload id.

        The sizes are known up front (an upload session's targets, a round's shards), so a store
        can place each part where it belongs as it arrives and complete without copying (the
        local store does, and refuses to join a part of another size). S3 keeps parts apart until
        it joins them and cannot check: callers hold parts to their sizes themselves.
        """

    @abstractmethod
    def put_part(
        self, key: str, upload_id: str, number: int, stream: BinaryIO, *, max_bytes: int | None = None
    ) -> UploadedPart:
        """Store part ``number`` (from 1) of an upload; sending a number again replaces that part.

        Raises InvalidWeights, keeping nothing of this part, if it exceeds ``max_bytes``.
        """

    @abstractmethod
    def uploaded_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        """The parts received so far, by number; ObjectNotFound if the upload is unknown or ended."""

    @abstractmethod
    def complete_upload(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        """Join ``parts`` (numbers 1..n, every declared part, each as listed by ``uploaded_parts``)
        into the object.

        Raises InvalidWeights if a part is missing or differs; ObjectNotFound if the upload was
        already completed or aborted. The joined bytes are not measured
        here: the caller reads them once to hash and check them together (``weights.scan``),
        since a second full read of a multi-GB object would double the time to accept it.
        """

    @abstractmethod
    def abort_upload(self, key: str, upload_id: str) -> None:
        """Drop an upload and every part received; aborting an unknown upload is not an error."""

    def presigned_part_url(self, key: str, upload_id: str, number: int, *, expires_in: int) -> str | None:
        """A URL a client can PUT part ``number`` to directly, or None to send it through the API."""
        return None

    @abstractmethod
    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        """Every object whose key starts with ``prefix``, lazily (a page at a time, never the whole
        listing in memory). Only valid keys inside the store: nothing else that shares its folder
        or bucket, and no symbolic link is followed."""

    @abstractmethod
    def list_uploads(self, prefix: str) -> Iterator[ListedUpload]:
        """Every multipart upload in progress whose key starts with ``prefix``, lazily."""

    def remove_leftovers(self, *, before: float) -> Removed:
        """Remove what interrupted writes left on the store's side, outside any key (temporary files
        last written before ``before``, epoch seconds); a store that leaves nothing has nothing to do."""
        return Removed()


def check_key(key: str) -> str:
    """Keys are relative paths of plain segments: nothing absolute, no ``..``, no hidden names."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("a weight-store key must be a non-empty string")
    segments = key.split("/")
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise InvalidKey(
            f"invalid key {key!r}: use '/'-separated segments of letters, digits, '.', '_' and '-', "
            "each starting with a letter or digit"
        )
    return key
