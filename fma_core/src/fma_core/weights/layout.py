"""Aggregates laid out as safetensors without numpy in between: a header built from the spec, then
every tensor's raw bytes in the spec's order.

An aggregate's data section is then one flat run of bytes in a fixed order, so any contiguous
range of it (a shard of a round, see ``fma_core.shards``) can be computed on its own and the file
assembled by concatenating the ranges behind the header: a sharded round writes exactly the bytes
of the unsharded one without reading its shards back through numpy. The result is a standard
safetensors file (the package and ``open_weights`` read it); only the order of tensors in its data
differs from what ``safetensors.save`` picks, which is why aggregates are written only this way.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

from fma_core.weights.format import ORDER_KEY
from fma_core.weights.spec import TensorSpec


def header_bytes(spec: TensorSpec, *, metadata: Mapping[str, str] | None = None) -> bytes:
    """The 8-byte length and JSON header of a file holding ``spec``'s tensors in order, padded with
    spaces to a multiple of 8 bytes so the data starts aligned."""
    header: dict[str, object] = {"__metadata__": {**(metadata or {}), ORDER_KEY: json.dumps(spec.names)}}
    offset = 0
    for info in spec:
        header[info.name] = {
            "dtype": info.dtype,
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text


Part = bytes | bytearray | memoryview | Callable[[], BinaryIO]
"""Bytes in memory, or a function opening a stream (opened only when reached, closed once read)."""


class ConcatStream(io.RawIOBase):
    """Read-only stream of several parts one after the other, copied chunk by chunk into the reader's
    buffer: never joined in memory, and at most one part's stream open at a time."""

    def __init__(self, parts: Sequence[Part]) -> None:
        super().__init__()
        self._parts = list(parts)
        self._current: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes of the current part, handed on without another copy."""
        if size is None or size < 0:
            return self.readall()
        while self._current is not None or self._parts:
            if self._current is None:
                part = self._parts.pop(0)
                self._current = _MemoryStream(memoryview(part)) if not callable(part) else part()
            chunk = self._current.read(size)  # any store's stream has read()
            if chunk:
                return chunk
            self._current.close()
            self._current = None
        return b""

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        chunk = self.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        self._parts = []
        super().close()


class _MemoryStream(io.RawIOBase):
    """A stream over a memoryview (e.g. a numpy array's bytes) that copies nothing until read."""

    def __init__(self, data: memoryview) -> None:
        super().__init__()
        self._data = data.cast("B") if data.nbytes else memoryview(b"")
        self._position = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._position + size
        chunk = bytes(self._data[self._position : end])
        self._position += len(chunk)
        return chunk

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._data) - self._position)
        view[:count] = self._data[self._position : self._position + count]
        self._position += count
        return count
