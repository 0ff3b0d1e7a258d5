"""Sharded rounds: a claimed round cut into groups of whole tensors, balanced by bytes.

Each shard is aggregated on its own (by another process, a Celery task, a Lambda invocation)
into a partial safetensors object; one worker then combines the partials in the spec's order
and commits once. Aggregators compute every element the same way whichever subset of tensors
they are given, so the combined aggregate is bit-identical to the unsharded one.

``RoundPlan`` is what travels between those workers: the claim (with its fencing token, so a
plan from a round that was taken over can never commit), the updates that passed the checks,
the tensor spec and the shards. It converts to and from plain JSON.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fma_core.connectors.metadata import ExperimentConfig, RoundClaim, UpdateRecord
from fma_core.weights import TensorSpec

PEAK_MEMORY_KEY = "fma.peak_memory_bytes"


def balance_shards(spec: TensorSpec, shard_bytes: int | None) -> tuple[tuple[str, ...], ...]:
    """Split the spec's tensors into ⌈size / shard_bytes⌉ groups (at most one per tensor) of near-equal bytes.

    Largest tensor first onto the lightest group (LPT), so no group exceeds the ideal share by more
    than one tensor; each group keeps the spec's order, and empty groups are dropped.
    """
    names = spec.names
    if not shard_bytes or spec.nbytes <= shard_bytes or len(names) < 2:
        return (tuple(names),)
    count = min(len(names), math.ceil(spec.nbytes / shard_bytes))
    loads = [(0, index) for index in range(count)]
    groups: list[set[str]] = [set() for _ in range(count)]
    for info in sorted(spec, key=lambda t: (-t.nbytes, t.name)):
        load, index = heapq.heappop(loads)
        groups[index].add(info.name)
        heapq.heappush(loads, (load + info.nbytes, index))
    return tuple(tuple(n for n in names if n in group) for group in groups if group)


@dataclass(frozen=True)
class RoundPlan:
    """A claimed round, checked and cut into shards, ready to be computed anywhere."""

    claim: RoundClaim
    update_ids: tuple[str, ...]  # the claimed updates that passed the checks
    spec: TensorSpec
    shards: tuple[tuple[str, ...], ...]
    quarantined: tuple[str, ...] = ()

    @property
    def experiment_id(self) -> str:
        return self.claim.experiment.experiment_id

    def partial_key(self, index: int) -> str:
        """Where shard ``index`` is written: fixed per claim, so a redelivered shard rewrites the same object."""
        return (
            f"partials/{self.experiment_id}/r{self.claim.round_number}-{self.claim.token}/{index}.safetensors"
        )

    def to_dict(self) -> dict[str, Any]:
        claim = self.claim
        experiment = claim.experiment
        return {
            "claim": {
                "experiment": {
                    "experiment_id": experiment.experiment_id,
                    "aggregator": experiment.aggregator,
                    "aggregator_params": dict(experiment.aggregator_params),
                    "round_policy": experiment.round_policy,
                    "tensor_spec": experiment.tensor_spec.to_json() if experiment.tensor_spec else None,
                    "max_staleness": experiment.max_staleness,
                },
                "token": claim.token,
                "worker": claim.worker,
                "round_number": claim.round_number,
                "parent_aggregate_id": claim.parent_aggregate_id,
                "updates": [asdict(u) for u in claim.updates],
                "enrolled_clients": sorted(claim.enrolled_clients),
                "claimed_at": claim.claimed_at,
                "expires_at": claim.expires_at,
            },
            "update_ids": list(self.update_ids),
            "spec": self.spec.to_json(),
            "shards": [list(s) for s in self.shards],
            "quarantined": list(self.quarantined),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundPlan:
        raw_claim = data["claim"]
        raw_experiment = dict(raw_claim["experiment"])
        spec_json = raw_experiment.pop("tensor_spec")
        experiment = ExperimentConfig(
            **raw_experiment, tensor_spec=TensorSpec.from_json(spec_json) if spec_json else None
        )
        claim = RoundClaim(
            experiment=experiment,
            token=raw_claim["token"],
            worker=raw_claim["worker"],
            round_number=raw_claim["round_number"],
            parent_aggregate_id=raw_claim["parent_aggregate_id"],
            updates=tuple(UpdateRecord(**u) for u in raw_claim["updates"]),
            enrolled_clients=frozenset(raw_claim["enrolled_clients"]),
            claimed_at=raw_claim["claimed_at"],
            expires_at=raw_claim["expires_at"],
        )
        return cls(
            claim=claim,
            update_ids=tuple(data["update_ids"]),
            spec=TensorSpec.from_json(data["spec"]),
            shards=tuple(tuple(s) for s in data["shards"]),
            quarantined=tuple(data.get("quarantined", ())),
        )
