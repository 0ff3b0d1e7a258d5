"""The round engine: claim → check the policy → stream the updates through the aggregator →
write the aggregate → commit. Every runner (in-process, Celery, Lambda) drives this one class.

Exactly once, whatever crashes or races: a round is computed under an expiring claim, renewed by
a heartbeat while the worker computes (``fma_core.leases``); the aggregate is written under a key
of that claim, so a retry of the claim rewrites the same object and no other claim's object is
ever touched; and the commit, which marks exactly the aggregated updates consumed, succeeds only
while the claim is the current one. A worker killed at any instant leaves its updates pending
until its lease expires and another worker claims them; that worker also removes whatever the
dead claim left in the weight store (partials, an uncommitted aggregate).

An update that cannot be used (missing object, malformed file, tensors that don't match the
spec, too stale) is quarantined with its reason and the round goes on without it: one bad
client never blocks an experiment.

Large models can be sharded: ``start_round`` claims and checks the round and cuts the aggregate's
data into byte ranges, a ``RoundPlan`` (see ``fma_core.shards``); ``finish_shard`` aggregates one
range, anywhere, into a partial object, except for the last shard to finish, which writes the
header, the other shards' partials and its own range one after the other as the aggregate, and
commits once. ``run_round`` is the same path with every shard computed in the calling process.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from fma_core.aggregators import Aggregator, UpdateInput, canonical_order, create_aggregator
from fma_core.connectors.metadata import (
    AggregateDraft,
    AggregateRecord,
    MetadataStore,
    RoundClaim,
    UpdateRecord,
)
from fma_core.connectors.weight_store import WeightStore
from fma_core.errors import FmaError, InvalidWeights, LeaseLost, ObjectNotFound, UpdateUnreadable
from fma_core.leases import LeaseKeeper
from fma_core.peak_memory import PeakMemory
from fma_core.requirements import PendingUpdate, RoundState, policy_from_config
from fma_core.shards import RoundPlan, aggregate_shard, balance_shards, manifest_key, partials_prefix
from fma_core.weights import TensorSpec, WeightsReader
from fma_core.weights.delta import DeltaReader
from fma_core.weights.layout import ConcatStream, Part, header_bytes

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
    wakeup_at: float | None = None  # not ready yet, but time alone makes it ready then (a deadline)


@dataclass(frozen=True)
class ComputedRound:
    """A round computed and written, ready to commit; ``draft`` is None if no update was usable."""

    draft: AggregateDraft | None
    quarantined: tuple[str, ...]


class RoundEngine:
    """Runs rounds against a MetadataStore and a WeightStore; safe to run from many workers at once.

    ``shard_bytes``: a model larger than this is planned as several shards (``start_round``);
    None keeps every round in one piece.
    """

    def __init__(
        self,
        metadata: MetadataStore,
        weights: WeightStore,
        *,
        worker_id: str | None = None,
        lease_seconds: float = 900.0,
        threads: int | None = None,
        shard_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metadata = metadata
        self.weights = weights
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_seconds = lease_seconds
        self.threads = threads
        self.shard_bytes = shard_bytes
        self.clock = clock

    def run_round(self, experiment_id: str) -> RoundOutcome:
        """Run the experiment's next round, here and now, if its policy says it is ready."""
        started = self.start_round(experiment_id)
        if isinstance(started, RoundOutcome):
            return started
        return self.finish_round(started)

    def start_round(self, experiment_id: str) -> RoundOutcome | RoundPlan:
        """Claim the round and check its updates; a RoundPlan to compute, or the outcome if there is none.

        The policy is checked before claiming (so a round that is not ready leaves no trace) and
        again on the claimed snapshot, which is the one that counts.
        """
        waiting = self._waiting(experiment_id)
        if waiting is not None:
            return waiting
        claim = self.claim(experiment_id)
        if claim is None:
            return RoundOutcome(
                "idle", experiment_id, reason="nothing pending, or another worker holds the round"
            )
        policy = policy_from_config(claim.experiment.round_policy)
        state = claim.state(self.clock())
        if not policy.is_ready(state):
            self.metadata.release_round(claim)
            return RoundOutcome(
                "not_ready",
                experiment_id,
                reason="the round policy is not met yet",
                wakeup_at=policy.wakeup_at(state),
            )
        try:
            with self._lease_kept(claim):  # checking many updates' headers on a slow store takes a while
                plan = self.plan_shards(claim)
        except Exception as error:
            return self._give_up(claim, error)
        if not plan.update_ids:
            self.metadata.release_round(claim)
            return RoundOutcome(
                "no_valid_updates",
                experiment_id,
                quarantined=plan.quarantined,
                reason="every update was unusable",
            )
        if len(plan.shards) > 1:
            manifest = json.dumps({"shards": len(plan.shards)}).encode()
            self.weights.put(plan.manifest_key, io.BytesIO(manifest))
        return plan

    def finish_round(self, plan: RoundPlan) -> RoundOutcome:
        """Compute a planned round in this process (every shard, if it has several) and commit it."""
        claim = plan.claim
        try:
            if len(plan.shards) > 1:
                records = [self.finish_shard(plan, index) for index in range(len(plan.shards))]
                return self._committed(records[-1], plan.quarantined)
            computed = self._compute_whole(plan)
        except Exception as error:
            self._delete_partials(plan)
            return self._give_up(claim, error)
        if computed.draft is None:
            self.metadata.release_round(claim)
            return RoundOutcome(
                "no_valid_updates",
                plan.experiment_id,
                quarantined=computed.quarantined,
                reason="every update was unusable",
            )
        return self._committed(self.commit(claim, computed), computed.quarantined)

    def claim(self, experiment_id: str) -> RoundClaim | None:
        """Claim the round; taking over an abandoned claim also removes what it left in the weight store."""
        claim = self.metadata.claim_round(
            experiment_id, worker=self.worker_id, lease_seconds=self.lease_seconds
        )
        if claim is not None and claim.taken_over_from is not None:
            self._remove_abandoned(experiment_id, *claim.taken_over_from)
        return claim

    def compute(self, claim: RoundClaim) -> ComputedRound:
        """Aggregate the claim's usable updates in one piece and write the result; nothing is committed here."""
        return self._compute_whole(self._plan(claim, None))

    def commit(self, claim: RoundClaim, computed: ComputedRound) -> AggregateRecord:
        assert computed.draft is not None
        return self.metadata.commit_round(claim, computed.draft)

    def plan_shards(self, claim: RoundClaim) -> RoundPlan:
        """Check the claimed updates (quarantining the unusable) and cut the spec into shards of ``shard_bytes``."""
        return self._plan(claim, self.shard_bytes)

    def _plan(self, claim: RoundClaim, shard_bytes: int | None) -> RoundPlan:
        quarantined: list[str] = []

        def quarantine(update: UpdateRecord, reason: str) -> None:
            self.metadata.quarantine_update(claim, update.update_id, reason)
            quarantined.append(update.update_id)

        usable, spec = self._usable_updates(claim, quarantine)
        return RoundPlan(
            claim=claim,
            update_ids=tuple(u.update_id for u in usable),
            spec=spec,
            shards=balance_shards(spec, shard_bytes),
            quarantined=tuple(quarantined),
        )

    def finish_shard(self, plan: RoundPlan, index: int) -> AggregateRecord | None:
        """Aggregate one shard; the shard that finds every other one done also writes the aggregate and
        commits it (its own range straight from memory), and returns the record. Else it leaves a
        partial object for that last shard and returns None.

        The partial is written in the background while this shard watches for the others: if they
        all finish meanwhile (shards of equal size finish together), this one is the last and goes
        on at once instead of waiting for its own write. Two shards finishing at the same instant
        may both combine: they write the same bytes under the same key, and only one commit
        succeeds. An unreadable update is quarantined and the shard fails: the round is given up
        and the next attempt goes on without that update.
        """
        started = time.perf_counter()
        data, peak = self._shard_data(plan, index)
        others = [i for i in range(len(plan.shards)) if i != index]
        last = self._partials_written(plan, others)
        with ThreadPoolExecutor(1, thread_name_prefix="fma-partial") as pool:
            writing = None if last else pool.submit(self._write_partial, plan, index, data, peak)
            while writing is not None and not last and not writing.done():
                time.sleep(0.005)
                last = self._partials_written(plan, others)
            if writing is not None and not last:
                writing.result()
                self._keep_partial(plan, index)
                last = self._partials_written(plan, others)
            logger.info(
                "round %s of %s: shard %s aggregated in %.3f s",
                plan.claim.round_number,
                plan.experiment_id,
                index,
                time.perf_counter() - started,
            )
            if not last:
                return None  # a shard still running will find this one's partial
            started = time.perf_counter()
            try:
                record = self._combine(plan, own=(index, data, peak))
            finally:
                if writing is not None:
                    wait([writing])  # this shard's own partial, no longer needed, is removed with the others
                self._delete_partials(plan)
        logger.info(
            "round %s of %s: %s shards combined and committed in %.3f s",
            plan.claim.round_number,
            plan.experiment_id,
            len(plan.shards),
            time.perf_counter() - started,
        )
        return record

    def _partials_written(self, plan: RoundPlan, indices: list[int]) -> bool:
        return all(self.weights.exists(plan.partial_key(i)) for i in indices)

    def _shard_data(self, plan: RoundPlan, index: int) -> tuple[np.ndarray, int]:
        """The shard's range of the aggregate's data, and the peak memory computing it took."""
        claim = plan.claim
        aggregator = self._aggregator(claim)
        with self._lease_kept(claim), PeakMemory() as peak:
            try:
                data = aggregate_shard(aggregator, self._inputs(plan), plan.spec, plan.shards[index])
            except UpdateUnreadable as error:
                self.metadata.quarantine_update(claim, error.update_id, error.reason)
                raise
        return data, peak.bytes

    def _write_partial(self, plan: RoundPlan, index: int, data: np.ndarray, peak: int) -> None:
        """The partial object: the shard's peak memory (8 bytes, little-endian), then its data."""
        self.weights.put(plan.partial_key(index), ConcatStream([struct.pack("<Q", peak), data.data]))

    def _keep_partial(self, plan: RoundPlan, index: int) -> None:
        """Check the lease once a partial is written: a shard finishing after its round was committed or
        taken over removes its partial again instead of leaving it behind."""
        try:
            self.metadata.renew_lease(plan.claim, lease_seconds=self.lease_seconds)
        except LeaseLost:
            self.weights.delete(plan.partial_key(index))
            raise

    def _combine(self, plan: RoundPlan, *, own: tuple[int, np.ndarray, int]) -> AggregateRecord:
        """Write the aggregate as the header then every shard's data in order (the partials' bytes go from
        the store back to the store, never through numpy), and commit it once."""
        claim = plan.claim
        aggregator = self._aggregator(claim)
        own_index, own_data, own_peak = own
        with self._lease_kept(claim), PeakMemory() as peak:
            others = [i for i in range(len(plan.shards)) if i != own_index]
            shard_peaks = [own_peak, *(self._partial_peak(plan, i) for i in others)]
            parts: list[Part] = [
                own_data.data if i == own_index else partial_data(self.weights, plan.partial_key(i))
                for i in range(len(plan.shards))
            ]
            key, size, digest = self._write_aggregate(claim, plan.spec, parts)
        draft = self._draft(
            plan,
            aggregator,
            key=key,
            size=size,
            digest=digest,
            duration=max(0.0, self.clock() - claim.claimed_at),
            peak=max(peak.bytes, *shard_peaks),
        )
        return self.metadata.commit_round(claim, draft)

    def fail_round(self, plan: RoundPlan, reason: str) -> None:
        """Give a planned round up (a shard failed): its updates stay pending, the reason is recorded."""
        self.metadata.release_round(plan.claim, failure=reason)
        self._delete_partials(plan)

    def _waiting(self, experiment_id: str) -> RoundOutcome | None:
        """The outcome without claiming when nothing is pending or the policy is not met; else None."""
        pending = self.metadata.pending_updates(experiment_id)
        if not pending:
            return RoundOutcome("idle", experiment_id, reason="nothing pending")
        policy = policy_from_config(self.metadata.experiment(experiment_id).round_policy)
        state = RoundState(
            updates=tuple(PendingUpdate(u.client_id, u.received_at) for u in pending),
            enrolled_clients=self.metadata.enrolled_clients(experiment_id),
            now=self.clock(),
        )
        if policy.is_ready(state):
            return None
        return RoundOutcome(
            "not_ready",
            experiment_id,
            reason="the round policy is not met yet",
            wakeup_at=policy.wakeup_at(state),
        )

    def _give_up(self, claim: RoundClaim, error: Exception) -> RoundOutcome:
        """Give the round back now rather than at lease expiry; its updates stay pending."""
        self.metadata.release_round(claim, failure=f"{type(error).__name__}: {error}")
        if not isinstance(error, FmaError):
            raise error
        logger.warning("round %s of %s failed: %s", claim.round_number, claim.experiment.experiment_id, error)
        return RoundOutcome("failed", claim.experiment.experiment_id, reason=str(error))

    def _committed(self, record: AggregateRecord, quarantined: tuple[str, ...]) -> RoundOutcome:
        logger.info(
            "round %s of %s committed: %s updates, %.3f s",
            record.round_number,
            record.experiment_id,
            len(record.draft.update_ids),
            record.draft.duration_seconds,
        )
        return RoundOutcome("committed", record.experiment_id, aggregate=record, quarantined=quarantined)

    def _compute_whole(self, plan: RoundPlan) -> ComputedRound:
        started = time.perf_counter()
        claim = plan.claim
        aggregator = self._aggregator(claim)
        quarantined = list(plan.quarantined)
        wanted = set(plan.update_ids)
        usable = [u for u in claim.updates if u.update_id in wanted]
        whole = tuple(piece for shard in plan.shards for piece in shard)
        with self._lease_kept(claim), PeakMemory() as peak:
            while usable:
                try:
                    data = aggregate_shard(aggregator, [self._input(u) for u in usable], plan.spec, whole)
                    break
                except UpdateUnreadable as error:
                    bad = next(u for u in usable if u.update_id == error.update_id)
                    self.metadata.quarantine_update(claim, bad.update_id, error.reason)
                    quarantined.append(bad.update_id)
                    usable.remove(bad)
            if not usable:
                return ComputedRound(None, tuple(quarantined))
            key, size, digest = self._write_aggregate(claim, plan.spec, [data.data])
            del data
        used = RoundPlan(claim, tuple(u.update_id for u in usable), plan.spec, plan.shards)
        draft = self._draft(
            used,
            aggregator,
            key=key,
            size=size,
            digest=digest,
            duration=time.perf_counter() - started,
            peak=peak.bytes,
        )
        return ComputedRound(draft, tuple(quarantined))

    def _draft(
        self,
        plan: RoundPlan,
        aggregator: Aggregator,
        *,
        key: str,
        size: int,
        digest: str,
        duration: float,
        peak: int,
    ) -> AggregateDraft:
        inputs = canonical_order(self._inputs(plan))
        shares = aggregator.input_weights(inputs)
        return AggregateDraft(
            weights_key=key,
            content_id=digest,
            size_bytes=size,
            update_ids=tuple(i.update_id for i in inputs),
            input_weights=tuple(shares) if shares is not None else None,
            aggregator=plan.claim.experiment.aggregator,
            aggregator_params=aggregator.params.to_dict(),
            duration_seconds=duration,
            peak_memory_bytes=peak or None,
        )

    def _aggregator(self, claim: RoundClaim) -> Aggregator:
        config = claim.experiment
        return create_aggregator(config.aggregator, config.aggregator_params, threads=self.threads)

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

    def _inputs(self, plan: RoundPlan) -> list[UpdateInput]:
        wanted = set(plan.update_ids)
        return [self._input(u) for u in plan.claim.updates if u.update_id in wanted]

    def _input(self, update: UpdateRecord) -> UpdateInput:
        return UpdateInput(
            update_id=update.update_id,
            content_id=update.content_id,
            num_examples=update.num_examples,
            open=lambda: self._open_update(update),
        )

    def _open_update(self, update: UpdateRecord) -> WeightsReader:
        """The update's weights; an update sent as a delta reads as its base plus the delta."""
        reader = self.weights.open_weights(update.weights_key)
        if update.base_weights_key is None:
            return reader
        try:
            base = self.weights.open_weights(update.base_weights_key)
        except BaseException:
            reader.close()
            raise
        return DeltaReader(reader, base)

    def _write_aggregate(self, claim: RoundClaim, spec: TensorSpec, data: list[Part]) -> tuple[str, int, str]:
        """Store the header and ``data`` (the aggregate's data, in pieces) in one pass; the store measures
        the SHA-256 on the way. The key is the claim's own: a retry, or a twin, of the claim rewrites
        the same bytes, and a worker taking an abandoned claim over knows what to remove. A claim that
        loses its commit leaves its object alone: a twin under the same claim may have committed it."""
        header = header_bytes(spec)
        key = aggregate_key(claim.experiment.experiment_id, claim.round_number, claim.token)
        stored = self.weights.put(key, ConcatStream([header, *data]))
        if stored.size != len(header) + spec.nbytes:
            self.weights.delete(key)
            raise InvalidWeights(
                f"the aggregate's data is {stored.size - len(header):,} bytes, not {spec.nbytes:,}"
            )
        return key, stored.size, stored.sha256

    def _remove_abandoned(self, experiment_id: str, round_number: int, token: str) -> None:
        """Remove the partials and the uncommitted aggregate of a claim whose lease expired; a failure
        here is logged, never allowed to block the round."""
        try:
            manifest = manifest_key(experiment_id, round_number, token)
            try:
                with self.weights.open(manifest) as stream:
                    count = int(json.load(stream)["shards"])
            except ObjectNotFound:
                count = 0
            prefix = partials_prefix(experiment_id, round_number, token)
            for index in range(count):
                self.weights.delete(f"{prefix}/{index}.partial")
            self.weights.delete(manifest)
            self.weights.delete(aggregate_key(experiment_id, round_number, token))
        except Exception:
            logger.exception("removing what round %s of %s left behind failed", round_number, experiment_id)

    def _partial_peak(self, plan: RoundPlan, index: int) -> int:
        with self.weights.open(plan.partial_key(index)) as stream:
            head = stream.read(8)
        if len(head) != 8:
            raise InvalidWeights(f"shard {index}'s partial object is truncated")
        return struct.unpack("<Q", head)[0]

    def _lease_kept(self, claim: RoundClaim) -> LeaseKeeper:
        return LeaseKeeper(self.metadata, claim, lease_seconds=self.lease_seconds)

    def _delete_partials(self, plan: RoundPlan) -> None:
        if len(plan.shards) > 1:
            for index in range(len(plan.shards)):
                self.weights.delete(plan.partial_key(index))
            self.weights.delete(plan.manifest_key)


def partial_data(weights: WeightStore, key: str) -> Callable[[], BinaryIO]:
    """Opens a partial object past its 8-byte peak-memory prefix: the shard's data."""

    def open_data() -> BinaryIO:
        stream = weights.open(key)
        stream.read(8)
        return stream

    return open_data


def aggregate_key(experiment_id: str, round_number: int, token: str) -> str:
    """Where a claim writes its aggregate."""
    return f"aggregates/{experiment_id}/r{round_number}-{token}.safetensors"
