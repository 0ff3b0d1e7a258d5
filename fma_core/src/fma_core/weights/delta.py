"""Updates sent as deltas: the client pushes ``trained - base``, the round engine reads ``base + delta``;
and the other way round, a full update's change from its base (``ChangeReader``) for server optimizers.

Experiments whose clients clip, noise or compress what they send want the change, not the
model. Reading the sum back, block by block, keeps every aggregator exactly as it is and lets
updates trained from different bases (stale clients) aggregate correctly, each over its own base.
Most of a round's deltas share one base: ``SharedBases`` opens it once and reads each of its
blocks once for all of them, so a round of N deltas reads N + 1 models, not 2N.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import numpy as np

from fma_core.errors import InvalidWeights
from fma_core.weights.format import TensorInfo, WeightsReader


class DeltaReader(WeightsReader):
    """The weights ``base + delta``, computed block by block as they are read; owns both readers."""

    def __init__(self, delta: WeightsReader, base: WeightsReader) -> None:
        self._delta, self._base = delta, base
        if list(delta.tensors.values()) != list(base.tensors.values()):
            self.close()
            raise InvalidWeights(
                "a delta must have exactly the tensors of the model it was trained from "
                "(names, order, dtypes and shapes)"
            )

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._delta.tensors

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        base = self._base.read_block(name, start, stop)
        delta = self._delta.read_block(name, start, stop)
        out = buffer[: stop - start] if buffer is not None else None
        return np.add(base, delta, out=out)

    def close(self) -> None:
        try:
            self._delta.close()
        finally:
            self._base.close()


class ChangeReader(WeightsReader):
    """The change ``trained - base`` of a full update, computed block by block; owns both readers.

    What server optimizers aggregate: each update's step away from the model it was trained from,
    so a stale update moves the global model by what it learned, not by how old its base is.
    """

    def __init__(self, trained: WeightsReader, base: WeightsReader) -> None:
        self._trained, self._base = trained, base
        if list(trained.tensors.values()) != list(base.tensors.values()):
            self.close()
            raise InvalidWeights("an update must have exactly the tensors of the model it was trained from")

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._trained.tensors

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        base = self._base.read_block(name, start, stop)
        trained = self._trained.read_block(name, start, stop)
        out = buffer[: stop - start] if buffer is not None else None
        return np.subtract(trained, base, out=out)

    def close(self) -> None:
        try:
            self._trained.close()
        finally:
            self._base.close()


class SharedBases:
    """Opens each base model once for every delta of a round that applies to it.

    ``open`` hands out one reader per delta; the base itself is opened on first use and closed
    when the last of its readers is. Aggregators read a block of every update in turn before the
    next block, so each thread keeps the base block it read last and the other deltas on that
    base get it without a read.
    """

    def __init__(self, open_weights: Callable[[str], WeightsReader]) -> None:
        self._open_weights = open_weights
        self._lock = threading.Lock()
        self._bases: dict[str, tuple[_LastBlock, int]] = {}

    def open(self, key: str) -> WeightsReader:
        with self._lock:
            base, users = self._bases.get(key) or (None, 0)
            if base is None:
                base = _LastBlock(self._open_weights(key))
            self._bases[key] = (base, users + 1)
        return _BaseUser(base, lambda: self._release(key))

    def _release(self, key: str) -> None:
        with self._lock:
            base, users = self._bases[key]
            if users > 1:
                self._bases[key] = (base, users - 1)
                return
            del self._bases[key]
        base.close()


class _LastBlock(WeightsReader):
    """A reader that remembers, per thread, the block it read last (read-only: many deltas add it)."""

    def __init__(self, reader: WeightsReader) -> None:
        self._reader = reader
        self._last = threading.local()

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._reader.tensors

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        key, block = getattr(self._last, "block", (None, None))
        if key != (name, start, stop):
            block = self._reader.read_block(name, start, stop)  # a fresh array, or a view of memory
            block.flags.writeable = False
            self._last.block = ((name, start, stop), block)
        return block

    def close(self) -> None:
        self._reader.close()


class _BaseUser(WeightsReader):
    """One delta's handle on a shared base: closing it releases that delta's use."""

    def __init__(self, base: _LastBlock, release: Callable[[], None]) -> None:
        self._base, self._release = base, release

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._base.tensors

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        return self._base.read_block(name, start, stop)

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class ScaledChangeReader(WeightsReader):
    """An update with its change scaled by ``factor``: ``change × factor`` alone (``base`` None), or
    ``base + change × factor``; owns both readers.

    How a round clips an update to a norm bound before any aggregator reads it: every algorithm
    then sees the clipped update through the same two openers (``open``, ``open_change``). Floating
    tensors are computed in their accumulator dtype (float32, or float64) and stored back, element
    by element, so every shard and block gives the same bits; integer tensors (counters, indices)
    are not part of a norm and are read unchanged.
    """

    def __init__(self, change: WeightsReader, factor: float, base: WeightsReader | None = None) -> None:
        self._change, self._factor, self._base = change, factor, base
        if base is not None and list(change.tensors.values()) != list(base.tensors.values()):
            self.close()
            raise InvalidWeights("an update must have exactly the tensors of the model it was trained from")

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._change.tensors

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        change = self._change.read_block(name, start, stop)
        dtype = change.dtype
        base = self._base.read_block(name, start, stop) if self._base is not None else None
        out = buffer[: stop - start] if buffer is not None else np.empty(stop - start, dtype)
        if dtype.kind != "f":
            if base is not None:
                return np.add(base, change, out=out)
            np.copyto(out, change)
            return out
        acc = np.float32 if dtype.itemsize <= 4 else np.float64
        scaled = np.multiply(change, acc(self._factor), dtype=acc)
        if base is not None:
            np.add(scaled, base, out=scaled, dtype=acc)
        np.copyto(out, scaled, casting="same_kind")
        return out

    def close(self) -> None:
        try:
            self._change.close()
        finally:
            if self._base is not None:
                self._base.close()
