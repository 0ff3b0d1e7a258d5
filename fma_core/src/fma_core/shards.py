"""Sharded rounds: a claimed round cut into contiguous byte ranges of the aggregate's data, of near-equal size.

An aggregate's data is its tensors' bytes one after the other in the spec's order
(``fma_core.weights.layout``). A shard is one contiguous range of it: element ranges of one or
more tensors (``Piece``), so a model of a few huge tensors shards as well as one of many small
ones. The aggregate object is written as one multipart upload with one part per shard (the
first carrying the header): each shard is aggregated on its own (by another process, a Celery
task, a Lambda invocation) and stored straight into its place, in parallel with the others, and
whichever shard finds all the others done joins the parts and commits once. Aggregation is
elementwise (each element computed the same way whichever block, thread or shard computes it),
so the sharded aggregate is bit-identical to the unsharded one.

``RoundPlan`` is what travels between those workers: the claim (with its fencing token, so a
plan from a round that was taken over can never commit), the updates that passed the checks,
the tensor spec, the shards, the norm screening (each update's norm and clip factor), differential
privacy's decision (each update's factor, the noise's scale; never its key), what the
algorithm's prepare pass found, the scalars of the state the round leaves, and the uploads of its
outputs (the aggregate, the state). It converts to and from plain JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fma_core.aggregators import Aggregator, UpdateInput
from fma_core.aggregators.base import RoundContext, Target, accumulator_dtype
from fma_core.connectors.metadata import ExperimentConfig, RoundClaim, UpdateRecord
from fma_core.state import state_header, state_key
from fma_core.update_stats import CHUNK, Measure, Sums
from fma_core.weights import TensorSpec
from fma_core.weights.layout import header_bytes

# Shard boundaries inside a tensor fall on multiples of this many elements: blocks stay whole and
# a tiny FMA_SHARD_BYTES cannot cut a model into thousands of slivers; and each update's figures,
# summed per chunk of this many elements (``fma_core.update_stats``), come out the same sharded or not.
ALIGN_ELEMENTS = CHUNK
_STRAY_BYTES = 2 * ALIGN_ELEMENTS * 8  # the most a shard's two cuts move it from its ideal share


@dataclass(frozen=True)
class Piece:
    """Elements ``[start, stop)`` of tensor ``name``, flattened."""

    name: str
    start: int
    stop: int


Shard = tuple[Piece, ...]


def balance_shards(spec: TensorSpec, shard_bytes: int | None, *, min_bytes: int = 1) -> tuple[Shard, ...]:
    """Cut the spec's data into ⌈size / shard_bytes⌉ contiguous ranges of near-equal bytes, but never into
    shards smaller than ``min_bytes`` (a weight store's smallest part).

    Each cut is placed at the aligned element nearest to its ideal byte offset (or a tensor's end), so
    a shard strays from its ideal share by about ``ALIGN_ELEMENTS`` elements at most; empty shards
    are dropped.
    """
    whole = tuple(Piece(t.name, 0, t.size) for t in spec)
    if not shard_bytes or spec.nbytes <= shard_bytes:
        return (whole,)
    # never more shards than aligned runs of elements, whatever shard_bytes says
    count = min(math.ceil(spec.nbytes / shard_bytes), sum(math.ceil(t.size / ALIGN_ELEMENTS) for t in spec))
    if min_bytes > 1:  # leave room for the cuts' stray: every shard, the last too, stays above min_bytes
        count = min(count, spec.nbytes // (min_bytes + _STRAY_BYTES) or 1)
    if count == 1:
        return (whole,)
    targets = iter([spec.nbytes * k / count for k in range(1, count)] + [math.inf])
    target = next(targets)
    shards: list[list[Piece]] = [[]]
    offset = 0  # bytes before the current tensor
    for info in spec:
        start = 0
        itemsize = info.numpy_dtype.itemsize
        while target < offset + info.nbytes:
            cut = round((target - offset) / itemsize / ALIGN_ELEMENTS) * ALIGN_ELEMENTS
            cut = min(max(cut, start), info.size)
            if cut > start:
                shards[-1].append(Piece(info.name, start, cut))
                start = cut
            if shards[-1]:
                shards.append([])
            target = next(targets)
        if start < info.size or info.size == 0:
            shards[-1].append(Piece(info.name, start, info.size))
        offset += info.nbytes
    return tuple(tuple(shard) for shard in shards if shard)


def shard_nbytes(spec: TensorSpec, shard: Shard, *, state: bool = False) -> int:
    """Bytes of a shard's data (``state``: of its range of one state tensor, kept in accumulator dtypes)."""
    sizes = {t.name: _dtype(t.numpy_dtype, state).itemsize for t in spec}
    return sum((p.stop - p.start) * sizes[p.name] for p in shard)


def _dtype(dtype: np.dtype, state: bool) -> np.dtype:
    return accumulator_dtype(dtype) if state else dtype


@dataclass(frozen=True)
class ShardData:
    """A shard's range of the aggregate's data and of each state tensor's, as bytes; and the exact sums
    of its updates' figures over that range (``fma_core.update_stats``), when measured."""

    data: np.ndarray
    state: tuple[np.ndarray, ...] = ()
    sums: Sums | None = None

    @property
    def sections(self) -> tuple[tuple[np.ndarray, ...], ...]:
        """Its sections of each output, in ``RoundPlan.outputs`` order: the aggregate's, the state's."""
        return ((self.data,), self.state)


def aggregate_shard(
    aggregator: Aggregator,
    updates: Sequence[UpdateInput],
    spec: TensorSpec,
    shard: Shard,
    context: RoundContext | None = None,
    *,
    measure: bool = False,
) -> ShardData:
    """The shard's range of the aggregate's data (and of the new state), as bytes: its pieces
    aggregated straight into place; with ``measure``, each update's sums against it, from the same reads."""
    data = np.empty(shard_nbytes(spec, shard), np.uint8)
    states = tuple(
        np.empty(shard_nbytes(spec, shard, state=True), np.uint8) for _ in aggregator.state_tensors
    )
    infos = {t.name: t for t in spec}
    targets = []
    offset = state_offset = 0
    for piece in shard:
        info = infos[piece.name]
        count = piece.stop - piece.start
        size = count * info.numpy_dtype.itemsize
        acc = accumulator_dtype(info.numpy_dtype)
        state_size = count * acc.itemsize
        state_out = {
            name: state[state_offset : state_offset + state_size].view(acc)
            for name, state in zip(aggregator.state_tensors, states, strict=True)
        }
        targets.append(
            Target(
                info, piece.start, piece.stop, data[offset : offset + size].view(info.numpy_dtype), state_out
            )
        )
        offset += size
        state_offset += state_size
    measuring = Measure() if measure else None
    aggregator.aggregate_into(updates, targets, context, measuring)
    return ShardData(data, states, measuring.sums() if measuring is not None else None)


@dataclass(frozen=True)
class Output:
    """One object a round writes, its aggregate or its server state: a header, then sections (the
    aggregate's data; each state tensor's) laid out shard by shard. Sharded, it is written as one
    multipart upload with one part per (section, shard), the header in front of the first part."""

    key: str
    header: bytes
    shard_bytes: tuple[int, ...]  # each shard's bytes of one section
    sections: int

    @property
    def size(self) -> int:
        return len(self.header) + self.sections * sum(self.shard_bytes)

    def part_sizes(self) -> list[int]:
        sizes = list(self.shard_bytes) * self.sections
        sizes[0] += len(self.header)
        return sizes

    def part_number(self, section: int, index: int) -> int:
        return section * len(self.shard_bytes) + index + 1


@dataclass(frozen=True)
class RoundPlan:
    """A claimed round, checked and cut into shards, ready to be computed anywhere."""

    claim: RoundClaim
    update_ids: tuple[str, ...]  # the claimed updates that passed the checks
    spec: TensorSpec
    shards: tuple[Shard, ...]
    quarantined: tuple[str, ...] = ()
    prepared: Any = None  # the algorithm's prepare pass over all updates (plain JSON)
    state_scalars: Mapping[str, float] | None = None  # the state the round leaves; None: it keeps none
    upload_ids: tuple[str | None, ...] = ()  # when sharded, each output's multipart upload (None: none)
    norms: Mapping[str, Any] | None = None  # the norm screening (``fma_core.norms.Screening``), plain JSON
    # differential privacy's decision (``fma_core.privacy.PrivateRound``): clip factors, noise, ledger
    privacy: Mapping[str, Any] | None = None

    @property
    def experiment_id(self) -> str:
        return self.claim.experiment.experiment_id

    def shard_key(self, index: int) -> str:
        """Where shard ``index`` records its part once stored: fixed per claim, so a redelivered shard
        rewrites the same object; the others' records are how a shard knows it is the last."""
        claim = self.claim
        return f"{shards_prefix(self.experiment_id, claim.round_number, claim.token)}/{index}.json"

    def outputs(self, aggregator: Aggregator) -> list[Output]:
        """What the round writes: the aggregate and, for an algorithm that keeps state, its state."""
        claim = self.claim
        outputs = [
            Output(
                aggregate_key(self.experiment_id, claim.round_number, claim.token),
                header_bytes(self.spec),
                tuple(shard_nbytes(self.spec, shard) for shard in self.shards),
                1,
            )
        ]
        if self.state_scalars is not None:
            tensors = aggregator.state_tensors
            header = state_header(self.spec, tensors, algorithm=aggregator.name, scalars=self.state_scalars)
            outputs.append(
                Output(
                    state_key(self.experiment_id, claim.round_number, claim.token),
                    header,
                    tuple(shard_nbytes(self.spec, shard, state=True) for shard in self.shards),
                    len(tensors),
                )
            )
        return outputs

    @property
    def manifest_key(self) -> str:
        return manifest_key(self.experiment_id, self.claim.round_number, self.claim.token)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (every field, nested records included), for a task's or an invocation's payload."""
        data = asdict(self)
        claim = data["claim"]
        spec = self.claim.experiment.tensor_spec
        claim["experiment"]["tensor_spec"] = spec.to_json() if spec else None
        claim["enrolled_clients"] = sorted(self.claim.enrolled_clients)
        data["spec"] = self.spec.to_json()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundPlan:
        claim = dict(data["claim"])
        experiment = dict(claim["experiment"])
        spec_json = experiment["tensor_spec"]
        experiment["tensor_spec"] = TensorSpec.from_json(spec_json) if spec_json else None
        taken = claim["taken_over_from"]
        claim.update(
            experiment=ExperimentConfig(**experiment),
            updates=tuple(UpdateRecord(**u) for u in claim["updates"]),
            enrolled_clients=frozenset(claim["enrolled_clients"]),
            taken_over_from=tuple(taken) if taken else None,
        )
        return cls(
            **{
                **data,
                "claim": RoundClaim(**claim),
                "update_ids": tuple(data["update_ids"]),
                "spec": TensorSpec.from_json(data["spec"]),
                "shards": tuple(tuple(Piece(**p) for p in shard) for shard in data["shards"]),
                "quarantined": tuple(data["quarantined"]),
                "upload_ids": tuple(data["upload_ids"]),
            }
        )


def aggregate_key(experiment_id: str, round_number: int, token: str) -> str:
    """Where a claim writes its aggregate: a retry, or a twin, of the claim rewrites the same object, and
    a worker taking an abandoned claim over knows what to remove."""
    return f"aggregates/{experiment_id}/r{round_number}-{token}.safetensors"


def shards_prefix(experiment_id: str, round_number: int, token: str) -> str:
    """Where one claim's shard records live: a new claim of the round never reuses them."""
    return f"shards/{experiment_id}/r{round_number}-{token}"


def manifest_key(experiment_id: str, round_number: int, token: str) -> str:
    """The small object naming a claim's shard count and upload, so whoever takes an abandoned round
    over can remove what it left at once, without listing the store (the sweep's job, later)."""
    return f"{shards_prefix(experiment_id, round_number, token)}/shards.json"
