"""Weights on the wire: safetensors with an ``fma.order`` metadata entry that keeps tensor order.

Uploads are a file-like ``SafetensorsBody`` that serves the header and then each array's own
buffer, so pushing a model never builds a second copy of it in memory, and a retry just rewinds.
Downloads land in a file first; ``read_file`` checks its header with the ``safetensors`` package
and reads each tensor into its array, so a pulled model costs its size in memory, once.

Models come in three shapes, converted by ``as_weights``: a mapping name → numpy array (the
native form), a PyTorch ``state_dict`` (name → tensor), or a Keras ``get_weights()`` list.
Neither framework is imported: tensors are recognised by their ``detach``/``numpy`` methods.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import safetensors

ORDER_KEY = "fma.order"
Weights = dict[str, np.ndarray]
"""An ordered mapping tensor name → numpy array: one model's parameters."""

_CODES = {
    np.dtype("<f2"): "F16",
    np.dtype("<f4"): "F32",
    np.dtype("<f8"): "F64",
    np.dtype("i1"): "I8",
    np.dtype("<i2"): "I16",
    np.dtype("<i4"): "I32",
    np.dtype("<i8"): "I64",
    np.dtype("u1"): "U8",
    np.dtype("<u2"): "U16",
    np.dtype("<u4"): "U32",
    np.dtype("<u8"): "U64",
}


def _to_numpy(value: Any) -> np.ndarray:
    """A numpy array from an array, a nested list, or a framework tensor (PyTorch: detach → cpu → numpy)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
        return np.asarray(value.numpy())
    return np.asarray(value)


def as_weights(model: Any, *, names: Sequence[str] | None = None) -> Weights:
    """Weights from a mapping (a ``state_dict`` too) or a list of arrays (Keras ``get_weights()``).

    A list's tensors are named by ``names`` when given (the names of the model last pulled, so
    they match the experiment), else by position ``"0"``, ``"1"``, …, as the server names them.
    """
    if isinstance(model, Mapping):
        return {str(name): _to_numpy(value) for name, value in model.items()}
    if isinstance(model, list | tuple):
        if names is None or len(names) != len(model):
            names = [str(position) for position in range(len(model))]
        return {name: _to_numpy(value) for name, value in zip(names, model, strict=True)}
    raise TypeError(
        f"cannot send a {type(model).__name__} as weights: pass a dict of arrays, a PyTorch "
        "state_dict, or a Keras get_weights() list"
    )


def to_list(weights: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The arrays in order, as Keras ``model.set_weights()`` takes them."""
    return list(weights.values())


class SafetensorsBody:
    """Safetensors bytes of ``weights``, read piece by piece straight from the arrays' buffers.

    ``len()`` is the bytes left to read (so requests sends a Content-Length), ``seek`` moves
    anywhere, for a retry or for one part of a multipart upload, and ``copy()`` gives another
    reader of the same bytes (one per thread) without serializing again. Arrays that are not
    little-endian and C-contiguous are converted one at a time, as they are read.
    """

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        arrays = {}
        header: dict[str, Any] = {"__metadata__": {ORDER_KEY: json.dumps(list(weights))}}
        offset = 0
        for name, value in weights.items():
            array = np.asarray(value)
            code = _CODES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
            if code is None:
                raise TypeError(
                    f"tensor {name!r} has dtype {array.dtype}, which FMA does not aggregate; "
                    f"convert it to one of {', '.join(sorted(set(_CODES.values())))}"
                )
            arrays[name] = array
            header[name] = {
                "dtype": code,
                "shape": list(array.shape),
                "data_offsets": [offset, offset + array.nbytes],
            }
            offset += array.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the format aligns tensor data to 8 bytes
        head = struct.pack("<Q", len(encoded)) + encoded
        self._pieces: list[bytes | np.ndarray] = [head, *arrays.values()]
        self._starts = list(itertools.accumulate((_nbytes(p) for p in self._pieces), initial=0))
        self._size = self._starts[-1]
        self.seek(0)

    @property
    def size(self) -> int:
        """The whole body's bytes, wherever reading stands."""
        return self._size

    def copy(self) -> SafetensorsBody:
        """Another reader of the same bytes, at position 0, sharing the arrays."""
        twin = object.__new__(SafetensorsBody)
        twin._pieces, twin._starts, twin._size = self._pieces, self._starts, self._size
        twin.seek(0)
        return twin

    def __len__(self) -> int:
        return self._size - self._position

    def __iter__(self):  # requests treats an iterable with a length as a body to stream
        while chunk := self.read(1 << 20):
            yield chunk

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or not 0 <= position <= self._size:
            raise OSError(f"a SafetensorsBody seeks to a position from 0 to {self._size}, not {position}")
        index = max(bisect.bisect_right(self._starts, position) - 1, 0)
        self._next = index
        self._current = memoryview(b"")
        self._skip = position - self._starts[index]
        self._position = position
        return position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._position
        out = bytearray()
        while len(out) < size:
            if not self._current:
                if self._next >= len(self._pieces):
                    break
                self._current = _bytes_view(self._pieces[self._next])[self._skip :]
                self._next += 1
                self._skip = 0
                continue
            taken = self._current[: size - len(out)]
            out += taken
            self._current = self._current[len(taken) :]
        self._position += len(out)
        return bytes(out)


def _nbytes(piece: bytes | np.ndarray) -> int:
    return len(piece) if isinstance(piece, bytes) else piece.nbytes


def _bytes_view(piece: bytes | np.ndarray) -> memoryview:
    if isinstance(piece, bytes):
        return memoryview(piece)
    array = np.ascontiguousarray(piece, dtype=piece.dtype.newbyteorder("<"))
    return memoryview(array.reshape(-1).view(np.uint8))


def encode(weights: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors bytes of ``weights`` at once (for files; uploads stream a ``SafetensorsBody``)."""
    return SafetensorsBody(weights).read()


def read_file(path: str | os.PathLike) -> Weights:
    """Weights from a safetensors file, in their ``fma.order`` (or file) order.

    The ``safetensors`` package parses and checks the header; each tensor is then read straight
    into its own array. Its ``get_tensor`` copies out of a memory map of the whole file, whose
    pages count in the process's memory beside the copies: a pulled model cost twice its size.
    """
    with safetensors.safe_open(os.fspath(path), framework="numpy") as file:
        metadata = file.metadata() or {}
        names = list(file.keys())
        if ORDER_KEY in metadata:
            order = json.loads(metadata[ORDER_KEY])
            if sorted(order) == sorted(names):
                names = order
        layout = _layout(path)
        if any(
            layout[name][0] is None for name in names
        ):  # a dtype numpy lacks (BF16): as the package reads it
            return {name: file.get_tensor(name) for name in names}
    weights: Weights = {}
    with open(path, "rb", buffering=0) as raw:
        for name in names:
            dtype, shape, start, end = layout[name]
            array = np.empty(shape, dtype=dtype)
            view = memoryview(array.reshape(-1).view(np.uint8))
            if view.nbytes != end - start:
                raise ValueError(
                    f"tensor {name!r} of {path}: {end - start} bytes for shape {shape} of {dtype}"
                )
            raw.seek(start)
            done = 0
            while done < view.nbytes:
                read = raw.readinto(view[done:])
                if not read:
                    raise ValueError(f"{path} ends inside tensor {name!r}")
                done += read
            weights[name] = array
    return weights


def _layout(path: str | os.PathLike) -> dict[str, tuple[np.dtype | None, tuple[int, ...], int, int]]:
    """Each tensor's numpy dtype (None if numpy has none), shape and absolute byte range in the file."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    dtypes = {code: dtype for dtype, code in _CODES.items()}
    return {
        name: (
            dtypes.get(entry["dtype"]),
            tuple(entry["shape"]),
            8 + length + entry["data_offsets"][0],
            8 + length + entry["data_offsets"][1],
        )
        for name, entry in header.items()
        if name != "__metadata__"
    }


def write_file(weights: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write weights as a safetensors file that keeps their order, streaming from the arrays."""
    body = SafetensorsBody(weights)
    with open(path, "wb") as file:
        while chunk := body.read(1 << 20):
            file.write(chunk)
