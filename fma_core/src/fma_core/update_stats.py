"""Each update's norm, cosine and distance to the round's aggregate, measured in the round's own pass,
and the updates that lie far from the others flagged.

What is measured, per update i, over the floating-point tensors (integer tensors are counters, not
learned), on the update as the round aggregated it (clipped if the norm bound clipped it):

- ``uᵢ``: what the algorithm reads of the update: the model the client trained (a delta read as its
  base plus itself) for the model-averaging algorithms (fedavg, mean, median, trimmed_mean, krum,
  bulyan), its change from its own base for the server optimizers (``reads_changes``);
- ``A``: the same of the aggregate: the new model, or for a server optimizer the new model minus
  the current one (the step the server took);
- ``r``: the point both are measured from: the current global model p for the model-averaging
  algorithms (none when the experiment has no model yet), the origin for changes;
- ``norm = ‖uᵢ − r‖``: for an update trained on the current model, the length of its change; for a
  stale one read as a model, its change plus how far the global model moved since its base;
- ``cosine = ⟨uᵢ − r, A − r⟩ / (‖uᵢ − r‖·‖A − r‖)``: whether it pulled where the round went;
- ``distance = ‖uᵢ − A‖``: the Euclidean distance from the update to the aggregate;
- ``outlier``: distance above median + k·σ̂ over the round's updates, σ̂ = 1.4826·MAD (the median
  absolute deviation scaled to a normal's σ, floored at 10⁻⁶ × the median so rounding alone never
  flags), k = 3; a round of fewer than 3 updates flags none. A median and a MAD: the 2 of 10 clients
  pushing noise cannot move the rule that flags them.

No second pass: a shard's blocks are read once, as the aggregator reads them (``Block.inputs``),
straight into this thread's buffer of the block (N × block values in the accumulator dtype, kept to
at most ``BUFFER_ELEMENTS`` = 2²⁰ by shrinking the block, as the coordinate-wise algorithms do:
≤ 4 MiB of float32 a thread, 8 MiB for float64 tensors, plus one row for the aggregate's block and
≤ ``_FLUSH_VALUES`` chunk sums); once the algorithm has written the block's result, each update's
sums are taken against it in place: w = u − A, then per chunk ‖w‖² and ⟨w, e⟩ with e = A − r (three
passes over a buffer that stays in the cache; the aggregation itself makes two), from which
‖u − r‖² = ‖w‖² + 2⟨w, e⟩ + ‖e‖² and ⟨u − r, e⟩ = ⟨w, e⟩ + ‖e‖² follow exactly. The distance is
taken directly (no cancellation); the norm and the cosine of an update whose step is much shorter
than the aggregate's (a client sending back the model it got) carry an error of about 3·10⁻⁴ × ‖e‖. The one read added is the
current global model's block (one model a round, not one per update) for the algorithms that do
not read it anyway; and Krum's unselected updates and Bulyan's (which those algorithms skip) are
read for their figures.

Sharded == unsharded, bit for bit: the sums are taken per 1024-element chunk of each tensor (the
shard cuts' alignment, so no chunk straddles two shards or two blocks) and the chunks' sums are
added exactly (an expansion: floats whose exact sum is the total, ``math.fsum`` rounding it once at
the end). A chunk's sum is taken in the accumulator dtype (float32 for float16/float32 tensors: a
relative error of about 10⁻⁷, which does not grow with the model), so the figures match float64
arithmetic to about 6 digits. Each shard's record carries its exact sums; the round's are their exact total, the same
whatever the shards, the threads or the block size.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REPORT_SECTION = "updates"
CHUNK = 1024  # = fma_core.shards.ALIGN_ELEMENTS: every block and shard starts on a chunk
BUFFER_ELEMENTS = 1 << 20  # N × block values held per thread
OUTLIER_K = 3.0
_MAD_TO_SIGMA = 1.4826
_SPREAD_FLOOR = 1e-6
_FLUSH_VALUES = 1 << 18  # chunk sums kept (all rows) before they are added into the exact totals
SUMS = ("distance", "cross")  # per update, with w = u − A and e = A − r: ‖w‖², ⟨w, e⟩ (and ‖e‖² a round)

Expansion = list[float] | None  # floats whose exact sum is the total; None: not finite


def exact_add(expansion: Expansion, values: Iterable[float]) -> Expansion:
    """The expansion of ``expansion``'s total plus ``values``, exactly (None once anything is not finite)."""
    if expansion is None:
        return None
    terms = [*expansion, *values]
    if not all(math.isfinite(t) for t in terms):
        return None
    out: list[float] = []
    try:
        while total := math.fsum([*terms, *(-t for t in out)]):
            out.append(total)
    except OverflowError:
        return None
    return out


def block_elements(aggregator_block: int, count: int) -> int:
    """The block a round measuring its updates uses: the algorithm's, shrunk so the N × block buffer
    stays within ``BUFFER_ELEMENTS``, and a whole number of chunks."""
    return max(CHUNK, min(aggregator_block, BUFFER_ELEMENTS // max(1, count)) // CHUNK * CHUNK)


@dataclass
class Sums:
    """Exact sums of one shard (or a round): per update id, each of ``SUMS``; and ‖e‖² = ‖A − r‖².

    With w = u − A and e = A − r, u − r = w + e, so ‖u − r‖² = ‖w‖² + 2⟨w, e⟩ + ‖e‖² and
    ⟨u − r, e⟩ = ⟨w, e⟩ + ‖e‖²: three passes over the updates' values (w, ‖w‖², ⟨w, e⟩) give all
    three figures, the distance itself without cancellation."""

    updates: dict[str, dict[str, Expansion]] = field(default_factory=dict)
    aggregate: Expansion = field(default_factory=list)
    reference: bool = False  # the current model was known: norms and cosines are defined
    changes: bool = False  # the updates were read as changes (measured from the origin)

    def merge(self, other: Sums) -> None:
        """Add another shard's (or thread's) sums, exactly."""
        self.reference = self.reference or other.reference
        self.changes = self.changes or other.changes
        self.aggregate = (
            exact_add(self.aggregate, other.aggregate or []) if other.aggregate is not None else None
        )
        for update_id, sums in other.updates.items():
            mine = self.updates.setdefault(update_id, {name: [] for name in SUMS})
            for name in SUMS:
                theirs = sums[name]
                mine[name] = exact_add(mine[name], theirs) if theirs is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "updates": self.updates,
            "aggregate": self.aggregate,
            "reference": self.reference,
            "changes": self.changes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sums:
        return cls(
            {u: dict(s) for u, s in data["updates"].items()},
            data["aggregate"],
            bool(data["reference"]),
            bool(data["changes"]),
        )

    @classmethod
    def total(cls, parts: Iterable[Sums]) -> Sums:
        result = cls()
        for part in parts:
            result.merge(part)
        return result


class Recorder:
    """One thread's view of the blocks it computes: a buffer of each update's values of the block, and
    the chunk sums taken once the block's result is written."""

    def __init__(self, update_ids: Sequence[str], reads_changes: bool) -> None:
        self.update_ids = list(update_ids)
        self.reads_changes = reads_changes
        self._rows: set[int] = set()
        self._buffers: dict[np.dtype, np.ndarray] = {}
        self._values = np.empty((0, 0))
        self._aggregate = np.empty(0)
        self._pending: list[np.ndarray] = []  # each (2N + 1, chunks) of float64 chunk sums
        self._pending_chunks = 0
        self.sums = Sums(updates={u: {name: [] for name in SUMS} for u in update_ids})

    def start(self, count: int, dtype: np.dtype) -> None:
        """A new block of ``count`` values of ``dtype`` (the accumulator's)."""
        n = len(self.update_ids)
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.size < (n + 1) * count:
            buffer = self._buffers[dtype] = _aligned((n + 1) * count, dtype)
        self._values = buffer[: n * count].reshape(n, count)
        self._aggregate = buffer[n * count : (n + 1) * count]
        self._rows.clear()

    def row(self, row: int, dtype: np.dtype) -> np.ndarray | None:
        """Where to read update ``row``'s values of the block, when they are read in the buffer's dtype
        (then ``keep`` has nothing to copy); None otherwise (float16: kept as float32)."""
        return self._values[row] if dtype == self._values.dtype else None

    def keep(self, row: int, values: np.ndarray) -> None:
        """The algorithm read update ``row``'s values of the block: keep them (a copy, unless they were
        read into the buffer)."""
        kept = self._values[row]
        if values.ctypes.data != kept.ctypes.data:
            np.copyto(kept, values, casting="unsafe")
        self._rows.add(row)

    def missing(self) -> list[int]:
        """Rows the algorithm did not read (Krum's unselected updates, Bulyan's)."""
        return [row for row in range(len(self.update_ids)) if row not in self._rows]

    def finish(self, result: np.ndarray, parent: np.ndarray | None) -> None:
        """Take the block's chunk sums against its result (and the current model's values, if any), in
        the accumulator dtype, in place in the buffer: three passes over it (w = u − A, ‖w‖², ⟨w, e⟩),
        no temporaries."""
        values, step = self._values, self._aggregate
        np.copyto(step, result, casting="unsafe")  # A, the new model
        if parent is not None:
            if not self.reads_changes:
                np.subtract(values, step, out=values)  # w = u − A
            np.subtract(step, parent, out=step, casting="unsafe")  # e = A − p
            if self.reads_changes:
                np.subtract(values, step, out=values)  # w = Δu − (A − p)
            cross = _chunk_dots(values, step)
            own = _chunk_dots(step[None], step)
        else:
            np.subtract(values, step, out=values)
            cross = np.zeros((len(values), -(-len(step) // CHUNK)), values.dtype)
            own = np.zeros((1, cross.shape[1]), values.dtype)
        distance = _chunk_dots(values, values)
        self.sums.reference = parent is not None
        self.sums.changes = self.reads_changes
        self._pending.append(np.concatenate([distance, cross, own]).astype(np.float64))
        self._pending_chunks += own.shape[1]
        if self._pending_chunks * (2 * len(self.update_ids) + 1) >= _FLUSH_VALUES:
            self.flush()

    def flush(self) -> Sums:
        """Add the chunk sums kept so far into the exact totals; the thread's sums."""
        if self._pending:
            table = np.concatenate(self._pending, axis=1)
            n = len(self.update_ids)
            for k, name in enumerate(SUMS):
                for row, update_id in enumerate(self.update_ids):
                    sums = self.sums.updates[update_id]
                    sums[name] = exact_add(sums[name], table[k * n + row].tolist())
            self.sums.aggregate = exact_add(self.sums.aggregate, table[-1].tolist())
            self._pending.clear()
            self._pending_chunks = 0
        return self.sums


def _aligned(size: int, dtype: np.dtype) -> np.ndarray:
    """An empty array starting on a 4096-byte boundary: every chunk of a block then sits at the same
    alignment, whichever block, thread or shard it is in."""
    raw = np.empty(size + 4096 // dtype.itemsize, dtype)
    skip = (-raw.ctypes.data % 4096) // dtype.itemsize
    return raw[skip : skip + size]


def _chunk_dots(rows: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per row of ``rows`` (N × count), its dot product with ``other`` (one row of count values, or N) over
    each chunk of ``CHUNK`` values (the last may be shorter), in their dtype: einsum's sum of products
    over a contiguous chunk, the same whichever block or shard the chunk is in."""
    n, count = rows.shape
    whole = count // CHUNK
    cut = whole * CHUNK
    one = other.ndim == 1
    sums = np.einsum(
        "ncj,cj->nc" if one else "ncj,ncj->nc",
        rows[:, :cut].reshape(n, whole, CHUNK),
        other[:cut].reshape(whole, CHUNK) if one else other[:, :cut].reshape(n, whole, CHUNK),
    )
    if count % CHUNK:
        tail = np.einsum("nj,j->n" if one else "nj,nj->n", rows[:, cut:], other[..., cut:])
        sums = np.concatenate([sums, tail[:, None]], axis=1)
    return sums


class Measure:
    """A shard's measuring, shared by its threads: each gets a ``Recorder``, their sums are merged.
    ``Aggregator.aggregate_into`` names the updates (in canonical order) when it starts."""

    def __init__(self) -> None:
        self.update_ids: list[str] = []
        self.reads_changes = False
        self._lock = threading.Lock()
        self._recorders: list[Recorder] = []

    def begin(self, update_ids: Sequence[str], reads_changes: bool) -> None:
        self.update_ids = list(update_ids)
        self.reads_changes = reads_changes

    def recorder(self) -> Recorder:
        recorder = Recorder(self.update_ids, self.reads_changes)
        with self._lock:
            self._recorders.append(recorder)
        return recorder

    def sums(self) -> Sums:
        result = Sums(updates={u: {name: [] for name in SUMS} for u in self.update_ids})
        for recorder in self._recorders:
            result.merge(recorder.flush())
        return result


def _value(expansion: Expansion) -> float | None:
    return math.fsum(expansion) if expansion is not None else None


def _root(expansion: Expansion) -> float | None:
    value = _value(expansion)
    return math.sqrt(max(value, 0.0)) if value is not None else None


def report(sums: Sums, shares: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The round's ``report["updates"]``: per update its norm, cosine, distance and outlier flag (and its
    share of the aggregate, when the algorithm gives one), the rule's figures, the aggregate's own norm."""
    aggregate_norm = _root(sums.aggregate)
    per_update: dict[str, dict[str, Any]] = {}
    for update_id, found in sums.updates.items():
        norm = dot = None
        own, distance, cross = sums.aggregate, found["distance"], found["cross"]
        if sums.reference and None not in (own, distance, cross):
            norm = _root(exact_add(distance, [*(2 * c for c in cross), *own]))  # ‖w + e‖²
            dot = _value(exact_add(cross, own))  # ⟨w + e, e⟩
        cosine = None
        if norm and aggregate_norm and dot is not None:
            cosine = max(-1.0, min(1.0, dot / (norm * aggregate_norm)))
        per_update[update_id] = {"norm": norm, "cosine": cosine, "distance": _root(found["distance"])}
        if shares is not None and update_id in shares:
            per_update[update_id]["share"] = shares[update_id]
    rule = flag_outliers(per_update)
    return {
        "measured_from": "changes" if sums.changes else ("current model" if sums.reference else None),
        "aggregate_norm": aggregate_norm if sums.reference else None,
        "outlier_rule": rule,
        "per_update": per_update,
    }


def flag_outliers(per_update: Mapping[str, dict[str, Any]], k: float = OUTLIER_K) -> dict[str, Any]:
    """Set each update's ``outlier``: its distance above median + k·σ̂ (σ̂ = 1.4826·MAD, floored at
    10⁻⁶ × the median); the rule's figures, or only ``k`` when fewer than 3 distances are known."""
    distances = [d["distance"] for d in per_update.values() if d["distance"] is not None]
    for figures in per_update.values():
        figures["outlier"] = figures["distance"] is None  # a non-finite update is an outlier
    if len(distances) < 3:
        return {"k": k, "median": None, "mad": None, "threshold": None}
    median = statistics.median(distances)
    mad = statistics.median(abs(d - median) for d in distances)
    threshold = median + k * max(_MAD_TO_SIGMA * mad, _SPREAD_FLOOR * median)
    for figures in per_update.values():
        if figures["distance"] is not None:
            figures["outlier"] = figures["distance"] > threshold
    return {"k": k, "median": median, "mad": mad, "threshold": threshold}
