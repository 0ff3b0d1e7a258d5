"""The round engine: claim → check the policy → stream the updates through the aggregator →
write the aggregate → commit. Every runner (in-process, Celery, Lambda) drives this one class.

Exactly once, whatever crashes or races: a round is computed under an expiring claim; the
aggregate is written under a key derived from its content, so a retry or a zombie worker
rewrites the same bytes; and the commit, which marks exactly the aggregated updates consumed,
succeeds only while the claim is the current one. A worker killed at any instant leaves its
updates pending until the lease expires and another worker claims them.

An update that cannot be used (missing object, malformed file, tensors that don't match the
spec, too stale) is quarantined with its reason and the round goes on without it: one bad
client never blocks an experiment.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from fma_core.aggregators import UpdateInput, canonical_order, create_aggregator
from fma_core.connectors.metadata import (
    AggregateDraft,
    AggregateRecord,
    MetadataStore,
    RoundClaim,
    UpdateRecord,
)
from fma_core.connectors.weight_store import WeightStore
from fma_core.errors import FmaError, InvalidWeights, UpdateUnreadable
from fma_core.requirements import policy_from_config
from fma_core.weights import TensorSpec, content_id, write_file

logger = logging.getLogger(__name__)

Status = Literal["committed", "not_ready", "idle", "no_valid_updates", "failed"]


@dataclass(frozen=True)
class RoundOutcome:
    """What one call of ``run_round`` did."""

    status: Status
    experiment_id: str
    aggregate: AggregateRecord | None = None
    quarantined: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class ComputedRound:
    """A round computed and written, ready to commit; ``draft`` is None if no update was usable."""

    draft: AggregateDraft | None
    quarantined: tuple[str, ...]


class RoundEngine:
    """Runs rounds against a MetadataStore and a WeightStore; safe to run from many workers at once."""

    def __init__(
        self,
        metadata: MetadataStore,
        weights: WeightStore,
        *,
        worker_id: str | None = None,
        lease_seconds: float = 900.0,
        threads: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metadata = metadata
        self.weights = weights
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_seconds = lease_seconds
        self.threads = threads
        self.clock = clock

    def run_round(self, experiment_id: str) -> RoundOutcome:
        """Run the experiment's next round if its policy says it is ready."""
        claim = self.claim(experiment_id)
        if claim is None:
            return RoundOutcome(
                "idle", experiment_id, reason="nothing pending, or another worker holds the round"
            )
        if not policy_from_config(claim.experiment.round_policy).is_ready(claim.state(self.clock())):
            self.metadata.release_round(claim)
            return RoundOutcome("not_ready", experiment_id, reason="the round policy is not met yet")
        try:
            computed = self.compute(claim)
        except Exception as error:
            # Give the round back now rather than at lease expiry; its updates stay pending.
            self.metadata.release_round(claim, failure=f"{type(error).__name__}: {error}")
            if not isinstance(error, FmaError):
                raise
            logger.warning("round %s of %s failed: %s", claim.round_number, experiment_id, error)
            return RoundOutcome("failed", experiment_id, reason=str(error))
        if computed.draft is None:
            self.metadata.release_round(claim)
            return RoundOutcome(
                "no_valid_updates",
                experiment_id,
                quarantined=computed.quarantined,
                reason="every update was unusable",
            )
        record = self.metadata.commit_round(claim, computed.draft)
        logger.info(
            "round %s of %s committed: %s updates, %.3f s",
            record.round_number,
            experiment_id,
            len(record.draft.update_ids),
            record.draft.duration_seconds,
        )
        return RoundOutcome("committed", experiment_id, aggregate=record, quarantined=computed.quarantined)

    def claim(self, experiment_id: str) -> RoundClaim | None:
        return self.metadata.claim_round(
            experiment_id, worker=self.worker_id, lease_seconds=self.lease_seconds
        )

    def compute(self, claim: RoundClaim) -> ComputedRound:
        """Aggregate the claim's usable updates and write the result; nothing is committed here."""
        started = time.perf_counter()
        config = claim.experiment
        aggregator = create_aggregator(config.aggregator, config.aggregator_params, threads=self.threads)
        quarantined: list[str] = []

        def quarantine(update: UpdateRecord, reason: str) -> None:
            self.metadata.quarantine_update(claim, update.update_id, reason)
            quarantined.append(update.update_id)

        usable, spec = self._usable_updates(claim, quarantine)
        while usable:
            try:
                weights = aggregator.aggregate([self._input(u) for u in usable], spec)
                break
            except UpdateUnreadable as error:
                bad = next(u for u in usable if u.update_id == error.update_id)
                quarantine(bad, error.reason)
                usable.remove(bad)
        if not usable:
            return ComputedRound(None, tuple(quarantined))
        self.metadata.renew_lease(claim, lease_seconds=self.lease_seconds)
        key, size, digest = self._write_aggregate(config.experiment_id, weights)
        inputs = canonical_order(self._input(u) for u in usable)
        shares = aggregator.input_weights(inputs)
        draft = AggregateDraft(
            weights_key=key,
            content_id=digest,
            size_bytes=size,
            update_ids=tuple(i.update_id for i in inputs),
            input_weights=tuple(shares) if shares is not None else None,
            aggregator=config.aggregator,
            aggregator_params=aggregator.params.to_dict(),
            duration_seconds=time.perf_counter() - started,
        )
        return ComputedRound(draft, tuple(quarantined))

    def commit(self, claim: RoundClaim, computed: ComputedRound) -> AggregateRecord:
        assert computed.draft is not None
        return self.metadata.commit_round(claim, computed.draft)

    def _usable_updates(
        self, claim: RoundClaim, quarantine: Callable[[UpdateRecord, str], None]
    ) -> tuple[list[UpdateRecord], TensorSpec]:
        """Check each claimed update's header against the spec (the data was checked on arrival)."""
        config = claim.experiment
        spec = config.tensor_spec
        usable = []
        for update in sorted(claim.updates, key=lambda u: (u.content_id, u.update_id)):
            lag = claim.round_number - 1 - update.base_round
            if config.max_staleness is not None and lag > config.max_staleness:
                quarantine(update, f"stale: trained on round {update.base_round}, {lag} rounds behind")
                continue
            try:
                with self.weights.open_weights(update.weights_key) as reader:
                    if spec is None:  # no declared spec: the first readable update sets it
                        spec = TensorSpec.from_reader(reader)
                    spec.check(reader.tensors)
            except (FmaError, OSError) as error:
                quarantine(update, f"unusable weights: {error}")
                continue
            usable.append(update)
        return usable, spec or TensorSpec(())

    def _input(self, update: UpdateRecord) -> UpdateInput:
        return UpdateInput(
            update_id=update.update_id,
            content_id=update.content_id,
            num_examples=update.num_examples,
            open=lambda: self.weights.open_weights(update.weights_key),
        )

    def _write_aggregate(self, experiment_id: str, weights: dict) -> tuple[str, int, str]:
        """Write under a content-derived key, so a retried or duplicated round rewrites the same object."""
        with tempfile.TemporaryDirectory(prefix="fma-aggregate-") as tmp:
            path = os.path.join(tmp, "aggregate.safetensors")
            write_file(weights, path)
            digest = content_id(path)
            key = f"aggregates/{experiment_id}/{digest}.safetensors"
            with open(path, "rb") as file:
                stored = self.weights.put(key, file)
        if stored.sha256 != digest:
            raise InvalidWeights("the aggregate changed while it was being stored")
        return key, stored.size, digest
