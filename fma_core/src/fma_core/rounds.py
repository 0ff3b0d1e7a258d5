"""The round engine: claim → check the policy → stream the updates through the aggregator →
write the aggregate → commit. Every runner (in-process, Celery, Lambda) drives this one class.

Exactly once, whatever crashes or races: a round is computed under an expiring claim, renewed by
a heartbeat while the worker computes (``fma_core.leases``); the aggregate is written under a key
of that claim, so a retry of the claim rewrites the same object and no other claim's object is
ever touched; and the commit, which marks exactly the aggregated updates consumed, succeeds only
while the claim is the current one. A worker killed at any instant leaves its updates pending
until its lease expires and another worker claims them; that worker also removes whatever the
dead claim left in the weight store (shard records and parts, an uncommitted aggregate).

An update that cannot be used (missing object, malformed file, tensors that don't match the
spec, too stale) is quarantined with its reason and the round goes on without it: one bad
client never blocks an experiment.

Large models can be sharded: ``start_round`` claims and checks the round, cuts the aggregate's
data into byte ranges and starts the aggregate's multipart upload, one part per range, a
``RoundPlan`` (see ``fma_core.shards``); ``finish_shard`` aggregates one range, anywhere, and
stores it as its part; the shard that finds every other part stored joins them, hashes the
aggregate and commits once. ``run_round`` is the same path with every shard computed in the
calling process.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

from fma_core.aggregators import Aggregator, UpdateInput, canonical_order, create_aggregator
from fma_core.connectors.metadata import (
    AggregateDraft,
    AggregateRecord,
    MetadataStore,
    RoundClaim,
    UpdateRecord,
)
from fma_core.connectors.weight_store import UploadedPart, WeightStore
from fma_core.errors import FmaError, InvalidWeights, LeaseLost, ObjectNotFound, UpdateUnreadable
from fma_core.leases import LeaseKeeper
from fma_core.peak_memory import PeakMemory
from fma_core.policies import PendingUpdate, RoundState, policy_from_config
from fma_core.shards import RoundPlan, aggregate_shard, balance_shards, manifest_key, shards_prefix
from fma_core.weights import TensorSpec, WeightsReader
from fma_core.weights.delta import DeltaReader, SharedBases
from fma_core.weights.layout import ConcatStream, Part, header_bytes

logger = logging.getLogger(__name__)

_READ_BYTES = 1 << 20

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
            self.metadata.round_started(claim)
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
            try:
                plan = self._start_upload(plan)
            except Exception as error:
                return self._give_up(claim, error)
        return plan

    def _start_upload(self, plan: RoundPlan) -> RoundPlan:
        """Start the aggregate's upload, one part per shard, and name it in the claim's manifest first,
        so that whoever takes this claim over can abort it."""
        claim = plan.claim
        key = aggregate_key(plan.experiment_id, claim.round_number, claim.token)
        upload_id = self.weights.start_upload(key, plan.part_sizes(len(header_bytes(plan.spec))))
        manifest = json.dumps({"shards": len(plan.shards), "upload_id": upload_id}).encode()
        try:
            self.weights.put(plan.manifest_key, io.BytesIO(manifest))
        except BaseException:
            self.weights.abort_upload(key, upload_id)
            raise
        return replace(plan, upload_id=upload_id)

    def finish_round(self, plan: RoundPlan) -> RoundOutcome:
        """Compute a planned round in this process (every shard, if it has several) and commit it."""
        claim = plan.claim
        try:
            if len(plan.shards) > 1:
                records = [self.finish_shard(plan, index) for index in range(len(plan.shards))]
                return self._committed(records[-1], plan.quarantined)
            computed = self._compute_whole(plan)
        except Exception as error:
            self._drop_shards(plan)
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
            shards=balance_shards(spec, shard_bytes, min_bytes=self.weights.min_part_bytes),
            quarantined=tuple(quarantined),
        )

    def finish_shard(self, plan: RoundPlan, index: int) -> AggregateRecord | None:
        """Aggregate one shard and store it as its part of the aggregate; the shard that then finds every
        other part stored also joins them and commits, and returns the record. Else None.

        Two shards finishing at the same instant may both find the others done: one joins the
        parts, the other learns the upload is complete and stops. An unreadable update is
        quarantined and the shard fails: the round is given up and the next attempt goes on
        without that update.
        """
        started = time.perf_counter()
        data, peak = self._shard_data(plan, index)
        self._store_shard(plan, index, data, peak)
        del data
        logger.info(
            "round %s of %s: shard %s aggregated in %.3f s",
            plan.claim.round_number,
            plan.experiment_id,
            index,
            time.perf_counter() - started,
        )
        if not all(self.weights.exists(plan.shard_key(i)) for i in range(len(plan.shards)) if i != index):
            return None  # a shard still running will find this one's part
        started = time.perf_counter()
        record = self._combine(plan)
        if record is not None:
            logger.info(
                "round %s of %s: %s shards combined and committed in %.3f s",
                plan.claim.round_number,
                plan.experiment_id,
                len(plan.shards),
                time.perf_counter() - started,
            )
        return record

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

    def _store_shard(self, plan: RoundPlan, index: int, data: np.ndarray, peak: int) -> None:
        """Store the shard as part ``index + 1`` of the aggregate's upload, then its record (the part, for
        joining, and the shard's peak memory); a shard whose round was meanwhile committed or taken
        over removes its record again rather than leave it behind."""
        claim = plan.claim
        key = aggregate_key(plan.experiment_id, claim.round_number, claim.token)
        body = ConcatStream([header_bytes(plan.spec), data.data] if index == 0 else [data.data])
        try:
            part = self.weights.put_part(key, plan.upload_id, index + 1, body)
        except ObjectNotFound:  # the upload is over: joined by the round's commit, or aborted
            self._check_current(claim)
            raise
        record = json.dumps({"part": asdict(part), "peak_memory_bytes": peak}).encode()
        self.weights.put(plan.shard_key(index), io.BytesIO(record))
        try:
            self._check_current(claim)
        except LeaseLost:
            self.weights.delete(plan.shard_key(index))
            raise

    def _combine(self, plan: RoundPlan) -> AggregateRecord | None:
        """Join the shards' parts into the aggregate, hash it as stored, and commit it once; None if a twin
        of this shard joined them first."""
        claim = plan.claim
        aggregator = self._aggregator(claim)
        key = aggregate_key(plan.experiment_id, claim.round_number, claim.token)
        with self._lease_kept(claim), PeakMemory() as peak:
            records = [self._shard_record(plan, i) for i in range(len(plan.shards))]
            try:
                self.weights.complete_upload(key, plan.upload_id, [part for part, _ in records])
            except ObjectNotFound:
                return None
            size, digest = self._measure(key)
            expected = len(header_bytes(plan.spec)) + plan.spec.nbytes
            if size != expected:
                self.weights.delete(key)
                raise InvalidWeights(f"the joined aggregate is {size:,} bytes, not {expected:,}")
        draft = self._draft(
            plan,
            aggregator,
            key=key,
            size=size,
            digest=digest,
            duration=max(0.0, self.clock() - claim.claimed_at),
            peak=max(peak.bytes, *(shard_peak for _, shard_peak in records)),
        )
        record = self.metadata.commit_round(claim, draft)
        self._drop_records(plan)  # the upload is joined: no abort to send
        return record

    def _shard_record(self, plan: RoundPlan, index: int) -> tuple[UploadedPart, int]:
        try:
            with self.weights.open(plan.shard_key(index)) as stream:
                record = json.load(stream)
        except ObjectNotFound:  # removed by a twin's commit, or by a worker that took the round over
            self._check_current(plan.claim)
            raise InvalidWeights(f"shard {index} of the round left no record") from None
        return UploadedPart(**record["part"]), int(record["peak_memory_bytes"])

    def _measure(self, key: str) -> tuple[int, str]:
        """Size and SHA-256 of a stored object, read once."""
        digest = hashlib.sha256()
        size = 0
        with self.weights.open(key) as stream:
            while chunk := stream.read(_READ_BYTES):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def fail_round(self, plan: RoundPlan, reason: str) -> None:
        """Give a planned round up (a shard failed): its updates stay pending, the reason is recorded."""
        self.metadata.release_round(plan.claim, failure=reason)
        self._drop_shards(plan)

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
                    bases = SharedBases(self.weights.open_weights)
                    inputs = [self._input(u, bases) for u in usable]
                    data = aggregate_shard(aggregator, inputs, plan.spec, whole)
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
        bases = SharedBases(self.weights.open_weights)
        return [self._input(u, bases) for u in plan.claim.updates if u.update_id in wanted]

    def _input(self, update: UpdateRecord, bases: SharedBases) -> UpdateInput:
        return UpdateInput(
            update_id=update.update_id,
            content_id=update.content_id,
            num_examples=update.num_examples,
            open=lambda: self._open_update(update, bases),
        )

    def _open_update(self, update: UpdateRecord, bases: SharedBases) -> WeightsReader:
        """The update's weights; an update sent as a delta reads as its base plus the delta."""
        reader = self.weights.open_weights(update.weights_key)
        if not update.delta:
            return reader
        try:
            base = bases.open(update.base_weights_key)
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
        """Remove the shard records, the aggregate's upload and the uncommitted aggregate of a claim whose
        lease expired; a failure here is logged, never allowed to block the round."""
        key = aggregate_key(experiment_id, round_number, token)
        try:
            manifest = manifest_key(experiment_id, round_number, token)
            try:
                with self.weights.open(manifest) as stream:
                    started = json.load(stream)
            except ObjectNotFound:
                started = {"shards": 0, "upload_id": None}
            prefix = shards_prefix(experiment_id, round_number, token)
            for index in range(int(started["shards"])):
                self.weights.delete(f"{prefix}/{index}.json")
            if started["upload_id"]:
                self.weights.abort_upload(key, started["upload_id"])
            self.weights.delete(manifest)
            self.weights.delete(key)
        except Exception:
            logger.exception("removing what round %s of %s left behind failed", round_number, experiment_id)

    def _check_current(self, claim: RoundClaim) -> None:
        """LeaseLost if the claim was committed or taken over (renewing it otherwise)."""
        self.metadata.renew_lease(claim, lease_seconds=self.lease_seconds)

    def _lease_kept(self, claim: RoundClaim) -> LeaseKeeper:
        return LeaseKeeper(self.metadata, claim, lease_seconds=self.lease_seconds)

    def _drop_shards(self, plan: RoundPlan) -> None:
        """Give up a sharded round's upload (its parts) and remove its records and manifest."""
        if plan.upload_id is not None:
            claim = plan.claim
            self.weights.abort_upload(
                aggregate_key(plan.experiment_id, claim.round_number, claim.token), plan.upload_id
            )
            self._drop_records(plan)

    def _drop_records(self, plan: RoundPlan) -> None:
        """Remove a sharded round's records and manifest (once its upload is joined, nothing else is left)."""
        for index in range(len(plan.shards)):
            self.weights.delete(plan.shard_key(index))
        self.weights.delete(plan.manifest_key)


def aggregate_key(experiment_id: str, round_number: int, token: str) -> str:
    """Where a claim writes its aggregate."""
    return f"aggregates/{experiment_id}/r{round_number}-{token}.safetensors"
