"""What every aggregation algorithm shares: inputs, a round context, typed parameters, and the
block-streaming driver.

An algorithm supplies one hook. A ``LinearAggregator`` gives one coefficient per update (the
result is Σ cᵢ·xᵢ); a ``CoordinateWiseAggregator`` reduces, per coordinate, the stack of the N
updates' values; any other algorithm writes each block itself (``_combine``). The driver does the
rest the same way for all of them:

- updates are put in a canonical order (content id, then size, then id), so the same updates in
  any order give bit-identical output;
- every tensor is cut into blocks; each block is computed from all updates while it sits in the
  CPU cache, so memory traffic is one read of each update plus one write of the result, and the
  extra memory is the result plus a few blocks (linear) or N blocks per thread (coordinate-wise);
  a linear algorithm's block is one pass of ``weighted_sum``: each update's values are read into
  the thread's buffer and folded into the block's sum at once;
- threads take the next block from one queue until none is left (numpy releases the GIL), so a
  thread slowed by other work on the machine leaves its share to the others; each element's
  arithmetic is the same whichever thread, block size or shard computes it, so sharded rounds are
  bit-identical too.

An algorithm that needs more than the round's updates declares it and receives it in the round's
``RoundContext``: the current global model (``needs_parent``), each update's change from the model
it was trained from (``reads_changes``), its own server state from the previous round
(``state_tensors``, ``state_scalars``, see ``fma_core.state``), and the result of a ``prepare`` pass
run once per round over all updates before any block is computed.
"""

from __future__ import annotations

import os
import threading
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, Self

import numpy as np

from fma_core import update_stats
from fma_core.aggregators.axpy import fused_axpy, one_blas_thread
from fma_core.errors import (
    ConfigurationError,
    FmaError,
    InvalidWeights,
    ObjectNotFound,
    StoreUnavailable,
    UpdateUnreadable,
)
from fma_core.weights import TensorInfo, TensorSpec, Weights, WeightsReader

THREADS_ENV = "FMA_AGGREGATION_THREADS"


@dataclass(frozen=True)
class UpdateInput:
    """One update as an aggregator sees it: who it is, how much it counts, how to read it.

    ``open`` reads the model the client trained (a delta reads as its base plus itself);
    ``open_change`` reads that model minus the one it was trained from (a delta as sent), when the
    round knows that base: what server optimizers aggregate, right for stale updates too.
    ``discount``: the factor an asynchronous round's staleness function gives it (``fma_core.asynchronous``),
    which every algorithm that weighs changes (the server optimizers) multiplies its share by.
    """

    update_id: str
    content_id: str
    num_examples: int
    open: Callable[[], WeightsReader]
    open_change: Callable[[], WeightsReader] | None = None
    discount: float = 1.0


@dataclass(frozen=True)
class ServerState:
    """The server state a round left, as the next round reads it (``fma_core.state``)."""

    algorithm: str
    scalars: Mapping[str, float]
    open: Callable[[], WeightsReader]  # tensors named "<state tensor>/<model tensor>"


@dataclass(frozen=True)
class RoundContext:
    """What a round gives an algorithm besides its updates; the same on every shard of the round."""

    round_number: int = 1
    parent: Callable[[], WeightsReader] | None = None  # the current global model, when there is one
    state: ServerState | None = None  # this algorithm's state from the previous round, if any
    prepared: Any = None  # what ``prepare`` returned for this round (plain JSON)
    # differential privacy (``fma_core.privacy.RoundNoise``): the Gaussian noise added to the mean change
    noise: Any = None


@dataclass(frozen=True)
class Target:
    """Elements ``[start, stop)`` of one tensor of the result, to be written into ``out`` (1-D), and
    the same elements of each of the new state's tensors into ``state_out``."""

    info: TensorInfo
    start: int
    stop: int
    out: np.ndarray
    state_out: Mapping[str, np.ndarray] = field(default_factory=dict)


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
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in values and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise ConfigurationError(f"missing parameter(s) {', '.join(missing)}{where}: it has no default")
        for name, value in values.items():
            expected = hints[name]
            if not _has_type(value, expected):
                raise ConfigurationError(
                    f"parameter {name!r}{where} must be a {expected.__name__}, not {value!r}"
                )
            if expected is float:
                try:
                    values[name] = float(value)
                except OverflowError:  # a whole number no float holds (JSON allows 1 and 400 zeros)
                    shown = f"{str(value)[:20]}… ({len(str(value))} digits)"
                    raise ConfigurationError(
                        f"parameter {name!r}{where} must be a finite number, not {shown}"
                    ) from None
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
    # Elements per block: 256 KiB of float32, big enough that Python's cost per call (about 1 µs)
    # stays a fraction of the block's, small enough that a thread's buffers of it (the sum, the
    # block read from a file; a server optimizer's state and model too) stay in a core's L2 cache.
    block_elements: ClassVar[int] = 1 << 16
    needs_parent: ClassVar[bool] = False  # reads the current global model (Block.parent)
    reads_changes: ClassVar[bool] = False  # Block.inputs gives each update's change, not its weights
    # per-coordinate server state: one tensor of each name per model tensor, kept from round to round
    state_tensors: ClassVar[tuple[str, ...]] = ()
    # usable with differential privacy (``fma_core.privacy``): the result is the mean of the updates with
    # equal shares, to which ``Block.add_noise`` adds the round's noise (linear rules, server optimizers)
    supports_privacy: ClassVar[bool] = False

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

    def round_shares(self, updates: Sequence[UpdateInput], context: RoundContext) -> list[float] | None:
        """Each update's share of this round's result, as the aggregate's lineage records it: ``input_weights``,
        unless the shares come from the round's prepare pass (Krum's selection)."""
        return self.input_weights(updates)

    def min_updates(self) -> int:
        """The fewest updates a round of this algorithm can use (Krum: 2f + 3). The round engine waits for
        them; ``prepare`` refuses fewer (``TooFewUpdates``)."""
        return 1

    @classmethod
    def keeps_state(cls) -> bool:
        """Whether the algorithm keeps server state: state tensors, or its own ``state_scalars``."""
        return bool(cls.state_tensors) or cls.state_scalars is not Aggregator.state_scalars

    def prepare(self, updates: Sequence[UpdateInput], spec: TensorSpec, context: RoundContext) -> Any:
        """Run once per round, before any shard, over all updates (``blocks`` streams them); the result,
        plain JSON and small (per-update scalars, pairwise distances), reaches every shard as
        ``context.prepared``. An algorithm that needs no such pass returns None."""
        return None

    def report(self, updates: Sequence[UpdateInput], context: RoundContext) -> Mapping[str, Any] | None:
        """What this round's algorithm decided that its weights do not show (which updates it selected,
        each one's score), plain JSON kept in the aggregate's lineage; usually read off
        ``context.prepared``. ``updates`` are in canonical order. None (the default): nothing to add."""
        return None

    def state_scalars(self, context: RoundContext) -> Mapping[str, float] | None:
        """The scalars of the state this round leaves (a step count, an adaptive bound), decided before
        any shard runs; None (the default) when the algorithm keeps no state but ``state_tensors``."""
        return None

    def aggregate(
        self, updates: Iterable[UpdateInput], spec: TensorSpec, context: RoundContext | None = None
    ) -> Weights:
        """Aggregate the updates' tensors named in ``spec`` (all of a model, or some of it)."""
        out = {t.name: np.empty(t.shape, t.numpy_dtype) for t in spec}
        self.aggregate_into(updates, [Target(t, 0, t.size, out[t.name].reshape(-1)) for t in spec], context)
        return out

    def aggregate_into(
        self,
        updates: Iterable[UpdateInput],
        targets: Sequence[Target],
        context: RoundContext | None = None,
        measure: update_stats.Measure | None = None,
    ) -> None:
        """Write each target's elements of the result (a range of a shard's bytes, or a whole tensor),
        and of the new state when the algorithm keeps one; with ``measure``, take each update's sums
        against the result from the same reads (``fma_core.update_stats``)."""
        context = context or RoundContext()
        ordered = canonical_order(updates)
        if not ordered:
            raise ValueError("nothing to aggregate: no updates")
        plan = self._plan(ordered, context)
        block = self._block(len(ordered))
        if measure is not None:
            block = update_stats.block_elements(block, len(ordered))
            measure.begin([u.update_id for u in ordered], self.reads_changes)
        tasks = [
            (target, begin, min(begin + block, target.stop))
            for target in targets
            for begin in range(target.start, target.stop, block)
        ]
        with ExitStack() as stack:
            stack.enter_context(one_blas_thread())  # the threads are ours, one per core
            inputs = [_Opened.update(update, stack, change=self.reads_changes) for update in ordered]
            parent = (
                _Opened.model("the current global model", context.parent, stack)
                if self.needs_parent or (measure is not None and context.parent is not None)
                else None
            )
            state = (
                _Opened.model("the previous server state", context.state.open, stack)
                if self.state_tensors and context.state is not None
                else None
            )
            workers = max(1, min(self.threads, len(tasks)))
            queue = iter(tasks)
            taking = threading.Lock()
            failed = threading.Event()

            def work() -> None:
                scratch = _Scratch()
                recorder = measure.recorder() if measure is not None else None
                while not failed.is_set():
                    with taking:
                        task = next(queue, None)
                    if task is None:
                        return
                    target, begin, end = task
                    try:
                        block = Block(target, begin, end, inputs, plan, scratch, parent, state, context.noise)
                        if recorder is not None and target.info.numpy_dtype.kind == "f":
                            block.measured_by(recorder)
                            self._combine(block)
                            block.measure()
                        else:
                            self._combine(block)
                    except BaseException:
                        failed.set()  # the others stop at their next block
                        raise

            if workers == 1:
                work()
            else:
                with ThreadPoolExecutor(workers, thread_name_prefix="fma-aggregate") as pool:
                    for future in [pool.submit(work) for _ in range(workers)]:
                        future.result()

    def _block(self, count: int) -> int:
        return self.block_elements

    def _plan(self, updates: Sequence[UpdateInput], context: RoundContext) -> Any:
        """Per-round data the block hook needs (e.g. coefficients), computed once per shard."""
        return None

    @abstractmethod
    def _combine(self, block: Block) -> None:
        """Write the block's elements of the result into ``block.out`` (and of each state tensor into
        ``block.state_out[name]``)."""


class LinearAggregator(Aggregator):
    """Σ cᵢ·xᵢ with coefficients that sum to one (FedAvg and the plain mean)."""

    supports_privacy = True

    def coefficients(self, updates: Sequence[UpdateInput]) -> np.ndarray:
        """One float64 coefficient per update, in the given order, summing to 1 (the hook of an algorithm
        whose coefficients depend on the updates alone; else ``round_coefficients``)."""
        raise NotImplementedError(f"{type(self).__name__} gives neither coefficients nor round_coefficients")

    def round_coefficients(self, updates: Sequence[UpdateInput], context: RoundContext) -> np.ndarray:
        """This round's coefficients: ``coefficients``, unless they come from the round's context (Krum's
        from its prepare pass). A zero coefficient's update is not read."""
        return self.coefficients(updates)

    def input_weights(self, updates: Sequence[UpdateInput]) -> list[float]:
        return self.coefficients(canonical_order(updates)).tolist()

    def _plan(self, updates: Sequence[UpdateInput], context: RoundContext) -> np.ndarray | float:
        coefficients = np.asarray(self.round_coefficients(updates, context), dtype=np.float64)
        if coefficients.shape != (len(updates),) or not np.isfinite(coefficients).all():
            raise FmaError(f"aggregator {self.name!r} gave invalid coefficients")
        if context.noise is not None and not (coefficients == coefficients[0]).all():
            raise FmaError(
                f"aggregator {self.name!r} gave unequal coefficients under differential privacy, whose "
                "sensitivity needs every update to weigh the same"
            )
        return share_plan(coefficients)

    def _combine(self, block: Block) -> None:
        out = block.out
        acc = (
            out
            if out.dtype == block.accumulator
            else block.scratch.get("acc", block.count, block.accumulator)
        )
        weighted_sum(block, block.plan, acc)
        block.add_noise(acc)
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

    def _combine(self, block: Block) -> None:
        acc_dtype = block.accumulator
        stack = block.scratch.get("stack", block.input_count * block.count, acc_dtype)
        stack = stack.reshape(block.input_count, block.count)
        for row, values in zip(stack, block.inputs(), strict=True):
            row[...] = values
        result = (
            block.out if block.out.dtype == acc_dtype else block.scratch.get("acc", block.count, acc_dtype)
        )
        self.reduce(stack, result)
        store(result, block.out)


def share_plan(shares: np.ndarray) -> np.ndarray | float:
    """The shares as ``weighted_sum`` takes them: their one value when all are equal (then it sums and
    scales once, one pass less per update), else the float64 array."""
    return float(shares[0]) if (shares == shares[0]).all() else shares


def weighted_sum(block: Block, shares: np.ndarray | float, acc: np.ndarray) -> None:
    """Write Σ sᵢ·xᵢ over the block's updates into ``acc`` (the block's accumulator dtype): the one pass
    of every linear algorithm, and of the server optimizers' mean change.

    ``shares`` gives one float64 share per update in canonical order (a zero share's update is not
    read), or one float when all are equal: the values are then summed and scaled once. Each update's
    block is read (into the thread's buffer, for a file) and folded into ``acc`` before the next is
    read, so both stay in the cache and memory sees one read of each update. Per element the
    arithmetic is fixed: ``acc = x₀·s₀``, then ``acc = fma(sᵢ, xᵢ, acc)`` in canonical order (one
    rounding to the accumulator dtype per update: BLAS axpy, ``fma_core.aggregators.axpy``) when the
    values are of the accumulator dtype (float32, float64); for float16 and integer values, numpy's
    ``acc + xᵢ·sᵢ``, the product and the sum each rounded. So an element has the same bits whichever
    thread, block or shard computes it (on one machine type: a CPU without a fused multiply-add would
    round the product first).
    """
    dtype = acc.dtype
    if isinstance(shares, float):
        values = block.inputs()
        np.copyto(acc, next(values), casting="safe")
        for value in values:
            np.add(acc, value, acc)
        np.multiply(acc, dtype.type(shares), acc)
        return
    rows = np.flatnonzero(shares)
    values = block.inputs(rows.tolist())
    coefficients = shares[rows].astype(dtype)
    np.multiply(next(values), coefficients[0], acc)
    axpy = fused_axpy(dtype) if block.info.numpy_dtype == dtype else None
    if axpy is not None:
        count = block.count
        for value, coefficient in zip(values, coefficients[1:].tolist(), strict=True):
            axpy(value, acc, count, coefficient)  # y ← y + a·x over n elements, in place
        return
    term = block.scratch.get("term", block.count, dtype)
    for value, coefficient in zip(values, coefficients[1:], strict=True):
        np.multiply(value, coefficient, term)
        np.add(acc, term, acc)


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


class Block:
    """One block of one tensor, as ``_combine`` computes it: where to write, and what to read.

    ``inputs()`` yields each update's values (or changes) in canonical order, each read into the
    same buffer: use a value before taking the next. ``parent()`` and ``state(name)`` read the
    current global model and the previous state (zeros when there is none) into buffers of their own.
    """

    def __init__(
        self,
        target: Target,
        start: int,
        stop: int,
        inputs: Sequence[_Opened],
        plan: Any,
        scratch: _Scratch,
        parent: _Opened | None,
        state: _Opened | None,
        noise: Any = None,
    ) -> None:
        self.info = target.info
        self.start, self.stop = start, stop
        offset = slice(start - target.start, stop - target.start)
        self.out = target.out[offset]
        self.state_out = {name: out[offset] for name, out in target.state_out.items()}
        self.plan = plan
        self.scratch = scratch
        self._inputs, self._parent, self._state = inputs, parent, state
        self._noise = noise
        self._recorder: update_stats.Recorder | None = None
        self._parent_read: np.ndarray | None = None

    def measured_by(self, recorder: update_stats.Recorder) -> None:
        """Keep each value ``inputs`` yields for ``recorder``, which measures the updates once the
        block's result is written (``measure``)."""
        self._recorder = recorder
        recorder.start(self.count, self.accumulator)

    def measure(self) -> None:
        """The block's result is written: read what the algorithm skipped, and take the sums."""
        recorder = self._recorder
        assert recorder is not None
        for row in recorder.missing():
            into = recorder.row(row, self.info.numpy_dtype)
            recorder.keep(row, self._inputs[row].read_block(self.info.name, self.start, self.stop, into))
        recorder.finish(self.out, self.parent() if self._parent is not None else None)

    @property
    def count(self) -> int:
        return self.stop - self.start

    @property
    def input_count(self) -> int:
        return len(self._inputs)

    @property
    def accumulator(self) -> np.dtype:
        """The dtype to compute this tensor in (and to keep its state in)."""
        return accumulator_dtype(self.info.numpy_dtype)

    def inputs(self, rows: Iterable[int] | None = None) -> Iterator[np.ndarray]:
        """Each update's values, or only those of ``rows`` (positions in canonical order), in order."""
        name, start, stop, dtype = self.info.name, self.start, self.stop, self.info.numpy_dtype
        read = self.scratch.get("read", self.count, dtype)
        recorder = self._recorder
        for row in range(len(self._inputs)) if rows is None else rows:
            if recorder is None:
                yield self._inputs[row].read_block(name, start, stop, read)
                continue
            into = recorder.row(row, dtype)  # read straight into the measure's buffer
            value = self._inputs[row].read_block(name, start, stop, into)
            recorder.keep(row, value)
            yield value

    def add_noise(self, values: np.ndarray) -> None:
        """Add the round's differential-privacy noise for this block's elements to ``values`` (the mean
        change, or a model that is the parent plus it), in place; nothing without privacy."""
        if self._noise is not None:
            self._noise.add(self.info.name, self.start, self.stop, values)

    def parent(self) -> np.ndarray:
        """The current global model's values of the block, read once however often asked."""
        if self._parent is None:
            raise FmaError("this algorithm did not declare needs_parent")
        if self._parent_read is None:
            read = self.scratch.get("parent", self.count, self.info.numpy_dtype)
            self._parent_read = self._parent.read_block(self.info.name, self.start, self.stop, read)
        return self._parent_read

    def state(self, name: str) -> np.ndarray:
        buffer = self.scratch.get(f"state:{name}", self.count, self.accumulator)
        if self._state is None:
            buffer.fill(0)
            return buffer
        return self._state.read_block(f"{name}/{self.info.name}", self.start, self.stop, buffer)


def blocks(
    updates: Sequence[UpdateInput], spec: TensorSpec, *, changes: bool = False, block_elements: int = 1 << 16
) -> Iterator[tuple[TensorInfo, list[np.ndarray]]]:
    """Every block of every tensor, with each update's values of it (or changes), in the given order:
    how a ``prepare`` pass reads all updates once, N blocks in memory at a time."""
    with ExitStack() as stack:
        opened = [_Opened.update(update, stack, change=changes) for update in updates]
        for info in spec:
            for start in range(0, info.size, block_elements):
                stop = min(start + block_elements, info.size)
                yield info, [reader.read_block(info.name, start, stop, None) for reader in opened]


class _Opened:
    """A reader opened for the whole aggregation, its read errors said as the round engine acts on them:

    - the update's own fault (invalid bytes, an object gone): ``UpdateUnreadable``, which quarantines it;
    - the store's (``StoreUnavailable``, an ``OSError``): ``StoreUnavailable``, which gives the round
      back with every update pending, so a network blip never drops an update;
    - the round's own models (the global model, the server state) at fault: ``FmaError``, the round fails.

    Any other error is a bug, raised as it is (the round is given back too)."""

    def __init__(self, reader: WeightsReader, what: str, update_id: str | None) -> None:
        self._reader, self._what, self._update_id = reader, what, update_id

    @classmethod
    def update(cls, update: UpdateInput, stack: ExitStack, *, change: bool) -> _Opened:
        opener = update.open_change if change else update.open
        if opener is None:
            raise UpdateUnreadable(
                update.update_id, "the model it was trained from is unknown, so its change cannot be read"
            )
        return cls._entered(opener, stack, f"update {update.update_id}", update.update_id)

    @classmethod
    def model(cls, what: str, opener: Callable[[], WeightsReader] | None, stack: ExitStack) -> _Opened:
        if opener is None:
            raise FmaError(f"{what}: there is none yet (publish an initial model before the first round)")
        return cls._entered(opener, stack, what, None)

    @classmethod
    def _entered(
        cls, opener: Callable[[], WeightsReader], stack: ExitStack, what: str, update_id: str | None
    ) -> _Opened:
        try:
            reader = stack.enter_context(opener())
        except Exception as error:
            raise _said(error, what, update_id, "cannot be opened") from error
        return cls(reader, what, update_id)

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None) -> np.ndarray:
        try:
            return self._reader.read_block(name, start, stop, buffer)
        except Exception as error:
            raise _said(error, self._what, self._update_id, f"tensor {name!r} cannot be read") from error


def _said(error: Exception, what: str, update_id: str | None, reason: str) -> Exception:
    """``error``, raised while reading ``what``, as the round engine acts on it (see ``_Opened``)."""
    if isinstance(error, StoreUnavailable | OSError):
        return StoreUnavailable(f"{what}: {reason}: {error}")
    if isinstance(error, InvalidWeights | ObjectNotFound):
        if update_id is not None:
            return UpdateUnreadable(update_id, f"{reason}: {error}")
        return FmaError(f"{what}: {reason}: {error}")
    return error
