"""What every aggregation algorithm shares: inputs, typed parameters, and the block-streaming driver.

An algorithm supplies one hook. A ``LinearAggregator`` gives one coefficient per update (the
result is Σ cᵢ·xᵢ); a ``CoordinateWiseAggregator`` reduces, per coordinate, the stack of the N
updates' values. The driver does the rest the same way for all of them:

- updates are put in a canonical order (content id, then size, then id), so the same updates in
  any order give bit-identical output;
- every tensor is cut into blocks; each block is computed from all updates while it sits in the
  CPU cache, so memory traffic is one read of each update plus one write of the result, and the
  extra memory is the result plus a few blocks (linear) or N blocks per thread (coordinate-wise);
- blocks are spread over threads (numpy releases the GIL); each element's arithmetic is the same
  whichever thread, block size or shard computes it, so sharded rounds are bit-identical too.
"""

from __future__ import annotations

import os
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Self

import numpy as np

from fma_core.errors import ConfigurationError, FmaError, UpdateUnreadable
from fma_core.weights import TensorInfo, TensorSpec, Weights, WeightsReader

THREADS_ENV = "FMA_AGGREGATION_THREADS"


@dataclass(frozen=True)
class UpdateInput:
    """One update as an aggregator sees it: who it is, how much it counts, how to read it."""

    update_id: str
    content_id: str
    num_examples: int
    open: Callable[[], WeightsReader]


@dataclass(frozen=True)
class AggregatorParams:
    """Base of each algorithm's parameters: a frozen dataclass built from plain JSON values."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, *, algorithm: str = "") -> Self:
        """Parse parameters from JSON, refusing unknown names and values of the wrong type."""
        where = f" for aggregator {algorithm!r}" if algorithm else ""
        if values is not None and not isinstance(values, Mapping):
            raise ConfigurationError(f"parameters{where} must be an object of names to values")
        values = dict(values or {})
        hints = typing.get_type_hints(cls)
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            takes = ", ".join(known) if known else "no parameters"
            raise ConfigurationError(f"unknown parameter(s) {', '.join(unknown)}{where}; it takes {takes}")
        for name, value in values.items():
            expected = hints[name]
            if not _has_type(value, expected):
                raise ConfigurationError(
                    f"parameter {name!r}{where} must be a {expected.__name__}, not {value!r}"
                )
            if expected is float:
                values[name] = float(value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_type(value: object, expected: type) -> bool:
    if isinstance(value, bool):
        return expected is bool
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


@dataclass(frozen=True)
class NoParams(AggregatorParams):
    """For algorithms that take no parameters."""


class Aggregator(ABC):
    """An aggregation algorithm: many updates of one tensor spec in, one set of weights out."""

    name: ClassVar[str]
    Params: ClassVar[type[AggregatorParams]] = NoParams
    # Elements per block: 1 MiB of float32, big enough to amortize Python's per-call cost,
    # small enough that a block and its scratch stay in the L2/L3 caches.
    block_elements: ClassVar[int] = 1 << 18

    def __init__(
        self, params: AggregatorParams | Mapping[str, Any] | None = None, *, threads: int | None = None
    ):
        if isinstance(params, self.Params):
            self.params = params
        elif isinstance(params, AggregatorParams):
            raise ConfigurationError(
                f"aggregator {self.name!r} takes {self.Params.__name__}, not {type(params).__name__}"
            )
        else:
            self.params = self.Params.from_mapping(params, algorithm=self.name)
        self.threads = threads or default_threads()

    def input_weights(self, updates: Sequence[UpdateInput]) -> list[float] | None:
        """Each update's share of the result, in canonical order, when the algorithm is linear."""
        return None

    def aggregate(self, updates: Iterable[UpdateInput], spec: TensorSpec) -> Weights:
        """Aggregate the updates' tensors named in ``spec`` (all of a model, or some of it)."""
        out = {t.name: np.empty(t.shape, t.numpy_dtype) for t in spec}
        self.aggregate_into(updates, [(t, 0, t.size, out[t.name].reshape(-1)) for t in spec])
        return out

    def aggregate_into(
        self, updates: Iterable[UpdateInput], targets: Sequence[tuple[TensorInfo, int, int, np.ndarray]]
    ) -> None:
        """For each ``(tensor, start, stop, out)``, write elements ``[start, stop)`` of the result into the
        1-D array ``out`` (a range of a shard's bytes, or a whole tensor)."""
        ordered = canonical_order(updates)
        if not ordered:
            raise ValueError("nothing to aggregate: no updates")
        plan = self._plan(ordered)
        block = self._block(len(ordered))
        tasks = [
            (info, begin, min(begin + block, stop), out[begin - start : min(begin + block, stop) - start])
            for info, start, stop, out in targets
            for begin in range(start, stop, block)
        ]
        with ExitStack() as stack:
            readers = [_Opened(update, stack) for update in ordered]
            workers = max(1, min(self.threads, len(tasks)))

            def work(part: int) -> None:
                scratch = _Scratch()
                for info, begin, end, target in tasks[part::workers]:
                    self._combine(readers, plan, info, begin, end, target, scratch)

            if workers == 1:
                work(0)
            else:
                with ThreadPoolExecutor(workers, thread_name_prefix="fma-aggregate") as pool:
                    for future in [pool.submit(work, part) for part in range(workers)]:
                        future.result()

    def _block(self, count: int) -> int:
        return self.block_elements

    def _plan(self, updates: Sequence[UpdateInput]) -> Any:
        """Per-round data the block hook needs (e.g. coefficients), computed once."""
        return None

    @abstractmethod
    def _combine(
        self,
        readers: Sequence[_Opened],
        plan: Any,
        info: TensorInfo,
        start: int,
        stop: int,
        out: np.ndarray,
        scratch: _Scratch,
    ) -> None:
        """Write elements ``[start, stop)`` of tensor ``info`` of the result into ``out``."""


class LinearAggregator(Aggregator):
    """Σ cᵢ·xᵢ with coefficients that sum to one (FedAvg and the plain mean)."""

    @abstractmethod
    def coefficients(self, updates: Sequence[UpdateInput]) -> np.ndarray:
        """One float64 coefficient per update, in the given order, summing to 1."""

    def input_weights(self, updates: Sequence[UpdateInput]) -> list[float]:
        return self.coefficients(canonical_order(updates)).tolist()

    def _plan(self, updates: Sequence[UpdateInput]) -> np.ndarray | float:
        """The coefficients, or their one value when all are equal: then sum and scale once, faster."""
        coefficients = np.asarray(self.coefficients(updates), dtype=np.float64)
        if coefficients.shape != (len(updates),) or not np.isfinite(coefficients).all():
            raise FmaError(f"aggregator {self.name!r} gave invalid coefficients")
        return float(coefficients[0]) if (coefficients == coefficients[0]).all() else coefficients

    def _combine(self, readers, plan, info, start, stop, out, scratch) -> None:
        acc_dtype = accumulator_dtype(info.numpy_dtype)
        count = stop - start
        acc = out if out.dtype == acc_dtype else scratch.get("acc", count, acc_dtype)
        term = scratch.get("term", count, acc_dtype)
        read = scratch.get("read", count, info.numpy_dtype)
        blocks = (reader.read_block(info.name, start, stop, read) for reader in readers)
        if isinstance(plan, float):  # equal shares: sum, then scale once
            np.copyto(acc, next(blocks), casting="safe")
            for block in blocks:
                np.add(acc, block, acc)
            np.multiply(acc, acc_dtype.type(plan), acc)
        else:
            coefficients = plan.astype(acc_dtype)
            np.multiply(next(blocks), coefficients[0], acc)
            for block, coefficient in zip(blocks, coefficients[1:], strict=True):
                np.multiply(block, coefficient, term)
                np.add(acc, term, acc)
        store(acc, out)


class CoordinateWiseAggregator(Aggregator):
    """Per coordinate, a statistic of the N updates' values (median, trimmed mean).

    Needs the N updates' values of a block at once: N × block elements per thread. The block
    shrinks as N grows so that stays near 4 MiB (float32) per thread.
    """

    stack_elements: ClassVar[int] = 1 << 20

    @abstractmethod
    def reduce(self, stack: np.ndarray, out: np.ndarray) -> None:
        """Reduce ``stack`` (N × block, which may be reordered in place) along axis 0 into ``out``."""

    def _block(self, count: int) -> int:
        return max(1024, min(self.block_elements, self.stack_elements // count))

    def _combine(self, readers, plan, info, start, stop, out, scratch) -> None:
        acc_dtype = accumulator_dtype(info.numpy_dtype)
        count = stop - start
        stack = scratch.get("stack", len(readers) * count, acc_dtype).reshape(len(readers), count)
        read = scratch.get("read", count, info.numpy_dtype)
        for row, reader in zip(stack, readers, strict=True):
            row[...] = reader.read_block(info.name, start, stop, read)
        result = out if out.dtype == acc_dtype else scratch.get("acc", count, acc_dtype)
        self.reduce(stack, result)
        store(result, out)


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """float32 for float16/float32 tensors, float64 for float64 and integer tensors."""
    return np.dtype(np.float32) if dtype.kind == "f" and dtype.itemsize <= 4 else np.dtype(np.float64)


def store(result: np.ndarray, out: np.ndarray) -> None:
    """Copy a block's result into the output tensor, rounding to nearest for integer tensors."""
    if result is out:
        return
    if out.dtype.kind in "iu":
        np.rint(result, out=result)
    np.copyto(out, result, casting="unsafe")


def canonical_order(updates: Iterable[UpdateInput]) -> list[UpdateInput]:
    """Updates sorted by content, so the input order never changes a bit of the output."""
    return sorted(updates, key=lambda u: (u.content_id, u.num_examples, u.update_id))


def default_threads() -> int:
    configured = os.environ.get(THREADS_ENV)
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            raise ConfigurationError(f"{THREADS_ENV} must be a whole number, not {configured!r}") from None
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Scratch:
    """Per-thread reusable buffers, so a round allocates a handful of blocks, not one per read."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, np.dtype], np.ndarray] = {}

    def get(self, role: str, count: int, dtype: np.dtype) -> np.ndarray:
        buffer = self._buffers.get((role, dtype))
        if buffer is None or buffer.size < count:
            buffer = self._buffers[(role, dtype)] = np.empty(count, dtype)
        return buffer[:count]


class _Opened:
    """An update's reader, opened for the whole aggregation, turning read errors into UpdateUnreadable."""

    def __init__(self, update: UpdateInput, stack: ExitStack) -> None:
        self.update = update
        try:
            self._reader = stack.enter_context(update.open())
        except Exception as error:
            raise UpdateUnreadable(update.update_id, f"cannot be opened: {error}") from error

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray) -> np.ndarray:
        try:
            return self._reader.read_block(name, start, stop, buffer)
        except Exception as error:
            raise UpdateUnreadable(
                self.update.update_id, f"tensor {name!r} cannot be read: {error}"
            ) from error
