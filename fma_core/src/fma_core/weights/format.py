"""Safetensors files: writing them, and reading them tensor by tensor without loading them whole.

Writing goes through the ``safetensors`` package's numpy API. Reading parses the format's small
JSON header here (an 8-byte little-endian length, then JSON, then raw little-endian data) because
the package only reads whole files or paths, while FMA must stream from sockets, object stores and
file descriptors, one block at a time, and must reject hostile headers with a precise message.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import safetensors.numpy

from fma_core.errors import InvalidWeights

Weights = dict[str, np.ndarray]
"""An ordered mapping tensor name → numpy array: one model's parameters."""

Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO
"""Anything weights can be read from: a path, bytes in memory, or a binary file object."""

DTYPES: Mapping[str, np.dtype] = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
}
"""The safetensors dtypes FMA aggregates. BOOL, BF16 and the F8 family are refused: they are
either not numbers or have no numpy type to compute with."""

_CODES = {dtype: code for code, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 16 * 1024 * 1024
"""The largest safetensors header FMA reads (uploads are refused, rounds quarantine such updates).

A header is the tensor table plus metadata: about 200 bytes a tensor with a 50-character name
(its entry and its place in the ``fma.order`` list), so 16 MiB holds some 80,000 tensors, over a
hundred times the table of a 70-billion-parameter language model (Llama 3 70B: 723 tensors).
Parsing a header costs about twice its size in memory, in every round that reads the update;
the safetensors package's own limit (100 MB) would let one update cost 200 MB each time."""
ORDER_KEY = "fma.order"  # metadata entry that keeps the tensors' order; safetensors sorts them
_CHUNK = 1 << 20


def dtype_code(dtype: np.dtype | type) -> str:
    """The safetensors code (``"F32"``) of a numpy dtype, or InvalidWeights if FMA can't use it."""
    dtype = np.dtype(dtype)
    code = _CODES.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if code is None:
        raise InvalidWeights(f"dtype {dtype} is not a numeric type FMA aggregates ({supported()})")
    return code


def supported() -> str:
    return "supported: " + ", ".join(DTYPES)


@dataclass(frozen=True)
class TensorInfo:
    """Name, safetensors dtype code and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.numpy_dtype.itemsize


def to_bytes(weights: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize weights to safetensors bytes, keeping their order in the metadata."""
    return safetensors.numpy.save(_prepared(weights), metadata=_with_order(weights, metadata))


def write_file(
    weights: Mapping[str, np.ndarray], path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None
) -> None:
    """Write weights as a safetensors file, keeping their order in the metadata."""
    safetensors.numpy.save_file(_prepared(weights), os.fspath(path), metadata=_with_order(weights, metadata))


def _prepared(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, array in weights.items():
        array = np.asarray(array)
        dtype_code(array.dtype)
        arrays[name] = np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
    return arrays


def _with_order(weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {**(metadata or {}), ORDER_KEY: json.dumps(list(weights))}


def content_id(source: Source) -> str:
    """SHA-256 (hex) of the serialized bytes: the identity of an update or an aggregate."""
    if isinstance(source, bytes | bytearray | memoryview):
        return hashlib.sha256(source).hexdigest()
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    return hashlib.file_digest(source, "sha256").hexdigest()


class WeightsReader(ABC):
    """Random access to the tensors of one set of weights, block by block.

    Aggregators read through this interface only, so a file on disk, bytes in memory, arrays
    in memory and (in fma-s3) ranged GETs on an object all aggregate the same way.
    """

    @property
    @abstractmethod
    def tensors(self) -> Mapping[str, TensorInfo]:
        """The tensors, in the weights' own order."""

    @abstractmethod
    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        """Elements ``[start, stop)`` of tensor ``name`` flattened, as a 1-D array.

        A reader that must copy bytes puts them in ``buffer`` (of the tensor's dtype, at least
        ``stop - start`` long) when one is given; a reader over memory returns a read-only view.
        """

    def in_storage_order(self) -> list[TensorInfo]:
        """The tensors in the order their bytes are stored, so a pass over all of them reads
        forward (one sequential read of a file or an object, no seeking back)."""
        return list(self.tensors.values())

    def read(self, name: str) -> np.ndarray:
        """One whole tensor, shaped."""
        info = self._info(name)
        return self.read_block(name, 0, info.size).reshape(info.shape)

    def to_weights(self) -> Weights:
        """Every tensor, in order (loads them all; for small models and tests)."""
        return {name: self.read(name) for name in self.tensors}

    def close(self) -> None:  # noqa: B027 - readers over memory have nothing to release
        """Release the file or connection behind the reader."""

    def __enter__(self) -> WeightsReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r}") from None


class ArrayReader(WeightsReader):
    """A reader over weights already in memory (the JSON path, simulations, benchmarks)."""

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self._arrays = {name: np.asarray(array, order="C").reshape(-1) for name, array in weights.items()}
        self._tensors = {
            name: TensorInfo(name, dtype_code(array.dtype), np.shape(array))
            for name, array in weights.items()
        }

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        return self._arrays[name][start:stop]


class SafetensorsReader(WeightsReader):
    """Reads a safetensors file from memory, a file descriptor or a seekable stream.

    The constructor checks the whole header against the size of the data (truncation, lying
    offsets, overlaps, trailing bytes, size limit) before any tensor is read.
    """

    def __init__(self, source: ByteSource, *, max_bytes: int | None = None) -> None:
        self._source = source
        self.nbytes = source.size
        try:
            if max_bytes is not None and self.nbytes > max_bytes:
                raise InvalidWeights(
                    f"weights are {self.nbytes:,} bytes, above the limit of {max_bytes:,} bytes"
                )
            self.metadata, self._tensors, self._offsets = _parse_header(source)
        except BaseException:
            source.close()  # the reader owns its source from the start
            raise

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    def in_storage_order(self) -> list[TensorInfo]:
        return sorted(self._tensors.values(), key=lambda info: self._offsets[info.name])

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        info = self._info(name)
        if not 0 <= start <= stop <= info.size:
            raise IndexError(f"block [{start}, {stop}) is outside tensor {name!r} of {info.size} elements")
        itemsize = info.numpy_dtype.itemsize
        return self._source.read_array(
            self._offsets[name] + start * itemsize, stop - start, info.numpy_dtype, buffer
        )

    def close(self) -> None:
        self._source.close()


def open_weights(source: Source, *, max_bytes: int | None = None) -> SafetensorsReader:
    """Open safetensors weights for streaming reads; the header is checked, no tensor is loaded.

    Paths and real files are read with ``pread`` (no shared file position, so threads may read
    blocks at once); bytes are read in place; other seekable streams under a lock; streams that
    cannot seek are first spooled to a temporary file, never to memory.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return SafetensorsReader(_BufferSource(memoryview(source)), max_bytes=max_bytes)
    if isinstance(source, str | os.PathLike):
        return SafetensorsReader(_FileSource(open(source, "rb")), max_bytes=max_bytes)
    if _has_fileno(source):
        return SafetensorsReader(_FileSource(source), max_bytes=max_bytes)
    if source.seekable():
        return SafetensorsReader(_StreamSource(source), max_bytes=max_bytes)
    return SafetensorsReader(_FileSource(_spool(source, max_bytes)), max_bytes=max_bytes)


def _has_fileno(stream: BinaryIO) -> bool:
    try:
        stream.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        return False
    return stream.seekable()


def _spool(stream: BinaryIO, max_bytes: int | None) -> BinaryIO:
    spooled = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the reader, which closes it
    limit = None if max_bytes is None else max_bytes + 1  # one byte more is enough to refuse
    copied = 0
    while chunk := stream.read(_CHUNK if limit is None else min(_CHUNK, limit - copied)):
        spooled.write(chunk)
        copied += len(chunk)
        if limit is not None and copied >= limit:
            break
    spooled.flush()
    return spooled


class ByteSource(ABC):
    """Random access to the bytes of one safetensors object of known ``size``.

    ``SafetensorsReader`` checks the header against ``size``, then reads tensors through it, so
    every place bytes can live (memory, a file, a stream, ranged GETs on an object store) gets
    the same checks. A read that finds fewer bytes than ``size`` promised raises InvalidWeights.
    """

    size: int

    @abstractmethod
    def read_bytes(self, offset: int, count: int) -> bytes | memoryview:
        """``count`` bytes from ``offset`` (the header: small reads)."""

    @abstractmethod
    def read_array(self, offset: int, count: int, dtype: np.dtype, buffer: np.ndarray | None) -> np.ndarray:
        """``count`` elements of ``dtype`` from ``offset``, into ``buffer`` when one is given."""

    def close(self) -> None:  # noqa: B027 - memory needs no release
        pass


class _BufferSource(ByteSource):
    def __init__(self, buffer: memoryview) -> None:
        self._buffer = buffer.cast("B")
        self.size = len(self._buffer)

    def read_bytes(self, offset: int, count: int) -> memoryview:
        return self._buffer[offset : offset + count]

    def read_array(self, offset: int, count: int, dtype: np.dtype, buffer: np.ndarray | None) -> np.ndarray:
        return np.frombuffer(self._buffer, dtype=dtype, count=count, offset=offset)


class _FileSource(ByteSource):
    """A real file: ``os.preadv`` into the caller's buffer, safe from many threads at once."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._fd = file.fileno()
        self.size = os.fstat(self._fd).st_size

    def read_bytes(self, offset: int, count: int) -> bytes:
        data = os.pread(self._fd, count, offset)
        if len(data) != count:
            raise InvalidWeights("file is truncated: it ended while being read")
        return data

    def read_array(self, offset: int, count: int, dtype: np.dtype, buffer: np.ndarray | None) -> np.ndarray:
        out = np.empty(count, dtype) if buffer is None else buffer[:count]
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                raise InvalidWeights("file is truncated: it ended while being read")
            done += got
        return out

    def close(self) -> None:
        self._file.close()


class _StreamSource(ByteSource):
    """A seekable stream without a file descriptor; reads are serialized by a lock."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.size = stream.seek(0, io.SEEK_END)

    def read_bytes(self, offset: int, count: int) -> bytes:
        with self._lock:
            self._stream.seek(offset)
            data = self._stream.read(count)
        if len(data) != count:
            raise InvalidWeights("stream is truncated: it ended while being read")
        return data

    def read_array(self, offset: int, count: int, dtype: np.dtype, buffer: np.ndarray | None) -> np.ndarray:
        out = np.empty(count, dtype) if buffer is None else buffer[:count]
        view = memoryview(out).cast("B")
        with self._lock:
            self._stream.seek(offset)
            got = self._stream.readinto(view)
        if got != len(view):
            raise InvalidWeights("stream is truncated: it ended while being read")
        return out

    def close(self) -> None:
        self._stream.close()


def _parse_header(source: ByteSource) -> tuple[dict[str, str], dict[str, TensorInfo], dict[str, int]]:
    if source.size < 8:
        raise InvalidWeights(
            f"not a safetensors file: {source.size} bytes, fewer than the 8-byte header length"
        )
    (header_len,) = struct.unpack("<Q", source.read_bytes(0, 8))
    if header_len > MAX_HEADER_BYTES:
        raise InvalidWeights(
            f"header claims {header_len:,} bytes, above the limit of {MAX_HEADER_BYTES:,} bytes for "
            "a safetensors header (the tensor table and metadata): send less metadata"
        )
    if 8 + header_len > source.size:
        raise InvalidWeights(
            f"file is truncated: the header claims {header_len:,} bytes "
            f"but only {source.size - 8:,} follow its length"
        )
    try:
        header = json.loads(bytes(source.read_bytes(8, header_len)), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidWeights(f"header is not valid JSON: {error}") from None
    if not isinstance(header, dict):
        raise InvalidWeights("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidWeights("header's __metadata__ must map strings to strings")

    data_start = 8 + header_len
    data_size = source.size - data_start
    entries = [_tensor_entry(name, entry) for name, entry in header.items()]
    position = 0
    for info, begin, end in sorted(entries, key=lambda e: (e[1], e[2])):
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
            raise InvalidWeights(f"data range [{begin}, {end}) {problem}", tensor=info.name)
        position = end
    if position > data_size:
        raise InvalidWeights(
            f"file is truncated: the header describes {position:,} bytes of tensor data, {data_size:,} are present"
        )
    if position < data_size:
        raise InvalidWeights(f"file has {data_size - position:,} bytes after the last tensor's data")

    order = _order(metadata, entries)
    tensors = {info.name: info for info, _, _ in entries}
    offsets = {info.name: data_start + begin for info, begin, _ in entries}
    return metadata, {name: tensors[name] for name in order}, offsets


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidWeights(f"header names tensor {key!r} twice")
        result[key] = value
    return result


def _tensor_entry(name: str, entry: object) -> tuple[TensorInfo, int, int]:
    if not isinstance(entry, dict):
        raise InvalidWeights("header entry is not an object", tensor=name)
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if code not in DTYPES:
        raise InvalidWeights(
            f"dtype {code} is not a numeric type FMA aggregates ({supported()})", tensor=name
        )
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise InvalidWeights(f"shape {shape!r} is not a list of non-negative integers", tensor=name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
        raise InvalidWeights(f"data_offsets {offsets!r} is not a pair of non-negative integers", tensor=name)
    info = TensorInfo(name, code, tuple(shape))
    begin, end = offsets
    if end - begin != info.nbytes:
        raise InvalidWeights(
            f"header gives shape {info.shape} of {code} ({info.nbytes:,} bytes) "
            f"but a data range of {end - begin:,} bytes",
            tensor=name,
        )
    return info, begin, end


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _order(metadata: dict[str, str], entries: list[tuple[TensorInfo, int, int]]) -> list[str]:
    names = [info.name for info, _, _ in entries]
    if ORDER_KEY in metadata:
        try:
            order = json.loads(metadata[ORDER_KEY])
        except json.JSONDecodeError:
            order = None
        if (
            not isinstance(order, list)
            or not all(isinstance(n, str) for n in order)
            or sorted(order) != sorted(names)
        ):
            raise InvalidWeights(f"metadata {ORDER_KEY!r} does not list exactly the file's tensors")
        return order
    return [info.name for info, _, _ in sorted(entries, key=lambda e: e[1])]


def load(source: Source, *, max_bytes: int | None = None) -> Weights:
    """Every tensor of a safetensors source, in order (for small models and tests)."""
    with open_weights(source, max_bytes=max_bytes) as reader:
        return {name: np.array(array) for name, array in reader.to_weights().items()}
