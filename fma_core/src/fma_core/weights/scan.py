"""``scan()``: hash and validate stored weights in one forward read.

Accepting a large update from object storage used to cost two full reads: one to measure its
SHA-256, one to check its header and values. ``scan`` does both in a single sequential pass
(one streaming GET on S3), so completing a multi-GB upload takes half the time. It reads to the
end even when the weights are invalid, so the hash is always known: a client whose bytes were
corrupted in transit is told its hash does not match, not that its tensors are wrong.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from fma_core.errors import InvalidWeights
from fma_core.weights.format import ByteSource, SafetensorsReader
from fma_core.weights.spec import TensorSpec, validate

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Scanned:
    """What one pass over an object found: its size and SHA-256, and the first problem, if any."""

    size: int
    sha256: str
    problem: InvalidWeights | None


def scan(
    stream: BinaryIO, *, size: int, spec: TensorSpec | None = None, max_bytes: int | None = None
) -> Scanned:
    """Read ``stream`` (expected to hold ``size`` bytes) once: hash it, check it as weights."""
    source = _ForwardSource(stream, size)
    problem = None
    try:
        validate(SafetensorsReader(source, max_bytes=max_bytes), spec)
    except InvalidWeights as error:
        problem = error
    source.drain()
    return Scanned(size=source.position, sha256=source.digest.hexdigest(), problem=problem)


class _ForwardSource(ByteSource):
    """A ByteSource over a stream read only forward: bytes skipped are still read and hashed."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.size = size
        self.position = 0
        self.digest = hashlib.sha256()
        self._stream = stream

    def read_bytes(self, offset: int, count: int) -> bytes:
        self._skip_to(offset)
        data = self._take(count)
        if len(data) < count:
            raise InvalidWeights(
                f"object is truncated: {self.position:,} bytes, not the {self.size:,} expected"
            )
        return data

    def read_array(self, offset: int, count: int, dtype: np.dtype, buffer: np.ndarray | None) -> np.ndarray:
        target = buffer[:count] if buffer is not None else np.empty(count, dtype)
        if not isinstance(self._stream, io.BufferedReader | io.FileIO):
            target.view(np.uint8)[:] = np.frombuffer(
                self.read_bytes(offset, count * dtype.itemsize), np.uint8
            )
            return target
        # A file (the local store's objects): read straight into the array and hash it there,
        # without the bytes object and the copy out of it.
        self._skip_to(offset)
        view = memoryview(target.view(np.uint8))
        filled = 0
        while filled < len(view) and (got := self._stream.readinto(view[filled:])):
            filled += got
        self.digest.update(view[:filled])
        self.position += filled
        if filled < len(view):
            raise InvalidWeights(
                f"object is truncated: {self.position:,} bytes, not the {self.size:,} expected"
            )
        return target

    def drain(self) -> None:
        """Read (and hash) the rest of the stream, whatever ``size`` said."""
        while self._take(_CHUNK, exact=False):
            pass

    def close(self) -> None:
        """The stream is the caller's to close."""

    def _skip_to(self, offset: int) -> None:
        if offset < self.position:
            raise ValueError(f"a forward read cannot go back from byte {self.position} to {offset}")
        while self.position < offset:
            if not self._take(min(_CHUNK, offset - self.position), exact=False):
                raise InvalidWeights(
                    f"object is truncated: {self.position:,} bytes, not the {self.size:,} expected"
                )

    def _take(self, count: int, *, exact: bool = True) -> bytes:
        pieces = []
        wanted = count
        while wanted > 0:
            piece = self._stream.read(wanted)
            if not piece:
                break
            pieces.append(piece)
            wanted -= len(piece)
            if not exact:
                break
        data = b"".join(pieces)
        self.digest.update(data)
        self.position += len(data)
        return data
