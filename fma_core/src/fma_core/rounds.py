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
client never blocks an experiment. Only the update's own fault quarantines it: a store that fails
to serve its bytes (``StoreUnavailable``: a broken connection, a timeout, S3 throttling or a 5xx, a
disk's I/O error) gives the round back with every update pending, for the sweep to run again, so a
network blip never drops an update.

An algorithm's minimum number of updates (``Aggregator.min_updates``: Krum's 2f + 3) joins the round
policy: below it, also after quarantines, the round is given back "not_ready" with the reason, and
waits for more updates rather than aggregate without the algorithm's guarantee or fail.

One path for every round: ``start_round`` claims and checks the round, runs the algorithm's
prepare pass, and cuts the aggregate's data into byte ranges, a ``RoundPlan`` (see
``fma_core.shards``); a whole-model round is a plan of one shard. ``finish_shard`` aggregates one
range, anywhere: a round of one shard writes its aggregate and commits; a round of several stores
each range as its part of the aggregate's multipart upload, and the shard that finds every other
part stored joins them, hashes the aggregate and commits once. ``run_round`` computes every shard
in the calling process, or sends them through a ``Dispatcher`` (Celery, Lambda).

The failure policy is the same whichever runner: a shard that fails gives the round up with its
reason (its updates stay pending); an update found unreadable is quarantined first, and the round
is started again at once without it; a shard whose round was meanwhile committed or taken over
just stops. Stateful algorithms get their previous state and write the next one beside the
aggregate (``fma_core.state``), in the same shards, so sharded rounds stay bit-identical.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from fma_core import asynchronous
from fma_core.aggregators import Aggregator, UpdateInput, canonical_order, create_aggregator
from fma_core.aggregators.axpy import load_blas
from fma_core.aggregators.base import RoundContext
from fma_core.aggregators.buffered import BufferedStep
from fma_core.connectors.metadata import (
    AggregateDraft,
    AggregateRecord,
    MetadataStore,
    RoundClaim,
    UpdateRecord,
)
from fma_core.connectors.weight_store import UploadedPart, WeightStore
from fma_core.dispatch import Dispatcher
from fma_core.errors import (
    ConfigurationError,
    FmaError,
    InvalidWeights,
    LeaseLost,
    ObjectNotFound,
    StoreUnavailable,
    TooFewUpdates,
    UpdateUnreadable,
)
from fma_core.leases import LeaseKeeper
from fma_core.norms import REPORT_SECTION, NormPolicy, Screening, measure, recent_norms, screen
from fma_core.peak_memory import PeakMemory
from fma_core.policies import PendingUpdate, RoundState
from fma_core.privacy import (
    REPORT_SECTION as PRIVACY_SECTION,
)
from fma_core.privacy import (
    BudgetSpent,
    PrivacyPolicy,
    PrivateRound,
    RoundNoise,
    charged_after,
    current_bound,
    decide,
    epsilon_spent,
    round_key,
)
from fma_core.shards import (
    Output,
    RoundPlan,
    ShardData,
    aggregate_key,
    aggregate_shard,
    balance_shards,
    manifest_key,
    shards_prefix,
)
from fma_core.state import read_state, state_key
from fma_core.update_stats import REPORT_SECTION as UPDATES_SECTION
from fma_core.update_stats import Sums
from fma_core.update_stats import report as updates_report
from fma_core.weights import TensorSpec, WeightsReader
from fma_core.weights.delta import ChangeReader, DeltaReader, ScaledChangeReader, SharedBases
from fma_core.weights.layout import ConcatStream, Part

logger = logging.getLogger(__name__)

_READ_BYTES = 1 << 20

Status = Literal[
    "committed", "not_ready", "idle", "no_valid_updates", "failed", "sharded", "shard_done", "budget_spent"
]


@dataclass(frozen=True)
class RoundOutcome:
    """What one call of ``run_round`` (or ``finish_shard``) did; ``to_dict`` for logs, tasks and the CLI."""

    status: Status
    experiment_id: str
    aggregate: AggregateRecord | None = None
    quarantined: tuple[str, ...] = ()
    reason: str | None = None
    wakeup_at: float | None = None  # not ready yet, but time alone makes it ready then (a deadline)
    shards: int | None = None  # "sharded": how many shards were sent out
    shard: int | None = None  # "shard_done": which shard was stored (another one will commit)
    retry: bool = False  # given up because an update turned out unreadable: run again, without it

    def to_dict(self) -> dict[str, Any]:
        aggregate = self.aggregate
        return {
            "status": self.status,
            "experiment_id": self.experiment_id,
            "aggregate_id": aggregate.aggregate_id if aggregate else None,
            "round": aggregate.round_number if aggregate else None,
            "updates": len(aggregate.draft.update_ids) if aggregate else 0,
            "quarantined": list(self.quarantined),
            "reason": self.reason,
            "wakeup_at": self.wakeup_at,
            "shards": self.shards,
            "shard": self.shard,
        }


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
        load_blas()  # the weighted sum's kernel (once per process), before any round is timed

    def run_round(self, experiment_id: str, dispatcher: Dispatcher | None = None) -> RoundOutcome:
        """Run the experiment's next round if its policy says it is ready: every shard here, or, when it
        has several and a ``dispatcher`` is given, one sent out per shard ("sharded"). A round given up
        because an update turned out unreadable starts again at once, without that update."""
        while True:
            plan = self.start_round(experiment_id)
            if isinstance(plan, RoundOutcome):
                return plan
            if dispatcher is not None and len(plan.shards) > 1:
                for index in range(len(plan.shards)):
                    dispatcher.send_shard(plan, index)
                return RoundOutcome("sharded", experiment_id, shards=len(plan.shards))
            for index in range(len(plan.shards)):
                outcome = self.finish_shard(plan, index)
                if outcome.status != "shard_done":
                    break
            if not outcome.retry:
                return outcome

    def run_shard(self, plan: RoundPlan, index: int, dispatcher: Dispatcher) -> RoundOutcome:
        """A shard a dispatcher sent: finish it, and if that gave the round up for an unreadable update,
        start the round again now, without it."""
        outcome = self.finish_shard(plan, index)
        return self.run_round(plan.experiment_id, dispatcher) if outcome.retry else outcome

    def start_round(self, experiment_id: str) -> RoundOutcome | RoundPlan:
        """Claim the round, check its updates and plan it; a RoundPlan to compute, or the outcome if there is none.

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
        policy = asynchronous.effective_policy(claim.experiment.round_policy, claim.experiment.asynchronous)
        state = claim.state(self.clock())
        if not policy.is_ready(state):
            self.metadata.release_round(claim)
            return RoundOutcome(
                "not_ready",
                experiment_id,
                reason="the round policy is not met yet",
                wakeup_at=policy.wakeup_at(state),
            )
        claim = self._buffered(claim)
        plan = RoundPlan(claim, (), TensorSpec(()), ())
        try:
            fewest = self._aggregator(claim).min_updates()
            if len(claim.updates) < fewest:
                raise TooFewUpdates(
                    f"aggregator {claim.experiment.aggregator!r} needs at least {fewest} updates a round; "
                    f"{len(claim.updates)} pending",
                    needed=fewest,
                    available=len(claim.updates),
                )
            self.metadata.round_started(claim)
            with self._lease_kept(claim):  # checking many updates' headers on a slow store takes a while
                plan = self.plan_shards(claim)
            if not plan.update_ids:
                self.metadata.release_round(claim)
                return RoundOutcome(
                    "no_valid_updates",
                    experiment_id,
                    quarantined=plan.quarantined,
                    reason="every update was unusable",
                )
            return self._start_uploads(plan) if len(plan.shards) > 1 else plan
        except TooFewUpdates as error:  # more updates will come: wait for them rather than fail
            self.metadata.release_round(claim)
            return RoundOutcome("not_ready", experiment_id, quarantined=plan.quarantined, reason=str(error))
        except BudgetSpent as error:  # the round does not run, now or ever: its updates stay pending
            self.metadata.release_round(claim)
            self.metadata.budget_spent(experiment_id, str(error))
            logger.info("experiment %s: %s", experiment_id, error)
            return RoundOutcome(
                "budget_spent", experiment_id, quarantined=plan.quarantined, reason=str(error)
            )
        except Exception as error:
            return self._failed(plan, error)

    def finish_shard(self, plan: RoundPlan, index: int) -> RoundOutcome:
        """Aggregate one shard; a round of one shard then writes its outputs and commits, a round of several
        stores the shard as its parts, and the shard that finds every other one stored joins them and
        commits ("committed"; the others: "shard_done").

        A shard may run twice or at once with a twin (a redelivered task, two shards finishing
        together): it rewrites the same objects, and one whose round has meanwhile been committed or
        taken over stops ("idle"). A failure gives the round up ("failed"; an unexpected error is
        raised after that); an unreadable update is quarantined first, and the outcome asks for a retry.
        """
        try:
            record = self._finish_shard(plan, index)
        except Exception as error:
            try:
                self._check_current(plan.claim)
            except LeaseLost:
                logger.info(
                    "round %s of %s was finished elsewhere", plan.claim.round_number, plan.experiment_id
                )
                return RoundOutcome("idle", plan.experiment_id, reason="the round was finished elsewhere")
            return self._failed(plan, error, where=f"shard {index} failed: " if len(plan.shards) > 1 else "")
        if record is None:
            return RoundOutcome("shard_done", plan.experiment_id, shard=index)
        draft = record.draft
        logger.info(
            "round %s of %s committed: %s updates, %.3f s",
            record.round_number,
            record.experiment_id,
            len(draft.update_ids),
            draft.duration_seconds,
        )
        return RoundOutcome("committed", record.experiment_id, aggregate=record, quarantined=plan.quarantined)

    @staticmethod
    def _buffered(claim: RoundClaim) -> RoundClaim:
        """An asynchronous round takes the K oldest pending updates (K = its buffer); the others wait for
        the next round, which they may make ready at once."""
        mode = asynchronous.AsyncMode.from_config(claim.experiment.asynchronous)
        if mode is None or len(claim.updates) <= mode.buffer:
            return claim
        oldest = sorted(claim.updates, key=lambda u: (u.received_at, u.update_id))
        return replace(claim, updates=tuple(oldest[: mode.buffer]))

    def claim(self, experiment_id: str) -> RoundClaim | None:
        """Claim the round; taking over an abandoned claim also removes what it left in the weight store."""
        claim = self.metadata.claim_round(
            experiment_id, worker=self.worker_id, lease_seconds=self.lease_seconds
        )
        if claim is not None and claim.taken_over_from is not None:
            self._remove_abandoned(experiment_id, *claim.taken_over_from)
        return claim

    def compute(self, claim: RoundClaim) -> ComputedRound:
        """Plan the claim's round in one piece and write its aggregate (and state); nothing is committed
        here. An update found unreadable is quarantined and the round planned again without it."""
        claim = self._buffered(claim)
        excluded: set[str] = set()
        while True:
            plan = self._plan(claim, None, excluded=frozenset(excluded))
            quarantined = (*sorted(excluded), *plan.quarantined)
            if not plan.update_ids:
                return ComputedRound(None, quarantined)
            try:
                return ComputedRound(self._write_whole(plan), quarantined)
            except UpdateUnreadable as error:
                excluded.add(error.update_id)

    def commit(self, claim: RoundClaim, computed: ComputedRound) -> AggregateRecord:
        assert computed.draft is not None
        return self.metadata.commit_round(claim, computed.draft)

    def plan_shards(self, claim: RoundClaim) -> RoundPlan:
        """Check the claimed updates (quarantining the unusable), run the prepare pass, and cut the spec
        into shards of ``shard_bytes``."""
        return self._plan(claim, self.shard_bytes)

    def fail_round(self, plan: RoundPlan, reason: str) -> None:
        """Give a planned round up: its updates stay pending, the reason is recorded."""
        self.metadata.release_round(plan.claim, failure=reason)
        self._drop_shards(plan)

    # Planning

    def _plan(
        self, claim: RoundClaim, shard_bytes: int | None, *, excluded: frozenset[str] = frozenset()
    ) -> RoundPlan:
        quarantined: list[str] = []

        def quarantine(update_id: str, reason: str) -> None:
            self.metadata.quarantine_update(claim, update_id, reason)
            quarantined.append(update_id)

        aggregator = self._aggregator(claim)
        if aggregator.needs_parent and claim.parent_weights_key is None:
            raise ConfigurationError(
                f"aggregator {aggregator.name!r} needs the current global model, and the experiment has "
                "none yet: give it an initial model"
            )
        usable, spec = self._usable_updates(claim, quarantine, excluded)
        plan = RoundPlan(
            claim=claim,
            update_ids=tuple(u.update_id for u in usable),
            spec=spec,
            shards=balance_shards(spec, shard_bytes, min_bytes=self.weights.min_part_bytes),
        )
        plan = self._screened(plan, quarantine)
        plan = self._privatized(plan, aggregator, quarantine)
        while plan.update_ids:
            context = self._context(plan, aggregator)
            try:
                prepared = aggregator.prepare(canonical_order(self._inputs(plan)), spec, context)
                break
            except UpdateUnreadable as error:
                quarantine(error.update_id, error.reason)
                plan = replace(plan, update_ids=tuple(u for u in plan.update_ids if u != error.update_id))
        else:
            return replace(plan, quarantined=tuple(quarantined))
        prepared = _plain_json(prepared, f"aggregator {aggregator.name!r}: prepare")
        scalars = (
            dict(aggregator.state_scalars(replace(context, prepared=prepared)) or {})
            if aggregator.keeps_state()
            else None
        )
        return replace(plan, quarantined=tuple(quarantined), prepared=prepared, state_scalars=scalars)

    def _screened(self, plan: RoundPlan, quarantine: Callable[[str, str], None]) -> RoundPlan:
        """The plan with the experiment's norm bound applied (``fma_core.norms``): each update's change
        measured once, those above the bound quarantined (refuse) or given a clip factor (clip), the
        decision kept in the plan for every shard. An update that cannot be read is quarantined and the
        others measured again."""
        claim = plan.claim
        policy = NormPolicy.from_config(claim.experiment.update_norm)
        if policy is None or not plan.update_ids:
            return plan
        if claim.parent_weights_key is None:
            raise ConfigurationError(
                "update_norm bounds each update's change from the model it was trained from, and the "
                "experiment has no global model yet: give it an initial model"
            )
        history = (
            recent_norms(self.metadata.recent_reports(plan.experiment_id, rounds=policy.adaptive.window))
            if policy.adaptive is not None
            else []
        )
        plan, norms = self._measured(plan, quarantine)
        if norms is None:
            return plan
        screening = screen(policy, norms, history)
        for update_id, reason in screening.refused.items():
            quarantine(update_id, reason)
        kept = tuple(u for u in plan.update_ids if u not in screening.refused)
        return replace(plan, update_ids=kept, norms=screening.to_json())

    def _measured(
        self, plan: RoundPlan, quarantine: Callable[[str, str], None]
    ) -> tuple[RoundPlan, dict[str, float] | None]:
        """Each update's change norm, every update read once; an unreadable one is quarantined and the
        rest measured again. None when no update is left."""
        while plan.update_ids:
            try:
                return plan, measure(canonical_order(self._inputs(plan)), plan.spec)
            except UpdateUnreadable as error:
                quarantine(error.update_id, error.reason)
                plan = replace(plan, update_ids=tuple(u for u in plan.update_ids if u != error.update_id))
        return plan, None

    def _privatized(
        self, plan: RoundPlan, aggregator: Aggregator, quarantine: Callable[[str, str], None]
    ) -> RoundPlan:
        """The plan under the experiment's differential privacy (``fma_core.privacy``): one update per
        client, the budget checked (``BudgetSpent`` if this round would exceed it), each change measured
        once and given its factor (clip × n/m), the noise's scale and, with adaptive clipping, the next
        round's bound; the decision kept in the plan for every shard."""
        claim = plan.claim
        policy = PrivacyPolicy.from_config(claim.experiment.privacy)
        if policy is None or not plan.update_ids:
            return plan
        check_privacy(aggregator, claim.experiment.update_norm, plan.spec)
        if claim.parent_weights_key is None:
            raise ConfigurationError(
                "privacy clips each update's change from the model it was trained from, and the experiment "
                "has no global model yet: give it an initial model"
            )
        records = {u.update_id: u for u in claim.updates}
        newest: dict[str, UpdateRecord] = {}
        for update_id in plan.update_ids:
            record = records[update_id]
            kept = newest.get(record.client_id)
            if kept is None or (record.received_at, record.update_id) > (kept.received_at, kept.update_id):
                newest[record.client_id] = record
        charged = charged_after(self.metadata.contributions(plan.experiment_id), set(newest))
        epsilon = epsilon_spent(policy.noise_multiplier, charged, policy.delta)
        if epsilon > policy.epsilon:
            raise BudgetSpent(
                f"the privacy budget is spent: round {claim.round_number} would bring ε to {epsilon:.4g} "
                f"(a client in {charged} rounds), over the budget ε = {policy.epsilon:g} at δ = {policy.delta:g}"
            )
        for update_id in plan.update_ids:
            record = records[update_id]
            if newest[record.client_id].update_id != update_id:
                quarantine(
                    update_id,
                    "with differential privacy a client counts once a round: its newer update "
                    f"{newest[record.client_id].update_id} is used",
                )
        plan = replace(
            plan, update_ids=tuple(u.update_id for u in newest.values() if u.update_id in plan.update_ids)
        )
        plan, norms = self._measured(plan, quarantine)
        if norms is None:
            return plan
        for update_id, norm in norms.items():
            if not math.isfinite(norm):
                quarantine(update_id, "the norm of its change is not finite")
        finite = {u: n for u, n in norms.items() if math.isfinite(n)}
        plan = replace(plan, update_ids=tuple(u for u in plan.update_ids if u in finite))
        if not plan.update_ids:
            return plan
        last = self.metadata.recent_reports(plan.experiment_id, rounds=1)
        bound = current_bound(policy, last[0] if last else None)
        decided = decide(
            policy,
            finite,
            bound,
            self._noise(plan.experiment_id, claim.round_number, 0.0),
            epsilon=epsilon,
            charged_rounds=charged,
        )
        return replace(plan, privacy=decided.to_json())

    def _noise(self, experiment_id: str, round_number: int, stddev: float) -> RoundNoise:
        return RoundNoise(round_key(self.metadata.privacy_secret(experiment_id), round_number), stddev)

    def _usable_updates(
        self, claim: RoundClaim, quarantine: Callable[[str, str], None], excluded: frozenset[str]
    ) -> tuple[list[UpdateRecord], TensorSpec]:
        """Check each claimed update's header against the spec (the data was checked on arrival)."""
        config = claim.experiment
        spec = config.tensor_spec
        mode = asynchronous.AsyncMode.from_config(config.asynchronous)
        max_staleness = mode.max_staleness if mode is not None else config.max_staleness
        usable = []
        for update in sorted(claim.updates, key=lambda u: (u.content_id, u.update_id)):
            if update.update_id in excluded:
                continue
            lag = claim.round_number - 1 - update.base_round
            if max_staleness is not None and lag > max_staleness:
                quarantine(
                    update.update_id, f"stale: trained on round {update.base_round}, {lag} rounds behind"
                )
                continue
            try:
                with self.weights.open_weights(update.weights_key) as reader:
                    if spec is None:  # no declared spec: the first readable update sets it
                        spec = TensorSpec.from_reader(reader)
                    spec.check(reader.tensors)
            except (InvalidWeights, ObjectNotFound) as error:  # the update's fault; the store's is raised
                quarantine(update.update_id, f"unusable weights: {error}")
                continue
            usable.append(update)
        return usable, spec or TensorSpec(())

    def _context(self, plan: RoundPlan, aggregator: Aggregator) -> RoundContext:
        """What the round gives its algorithm: the parent model, the previous state it left (if it was this
        algorithm's), what the prepare pass found."""
        claim = plan.claim
        parent_key = claim.parent_weights_key
        state = None
        if aggregator.keeps_state() and claim.parent_state_key is not None:
            state = read_state(claim.parent_state_key, self.weights.open_weights)
            if state.algorithm != aggregator.name:
                logger.info(
                    "round %s of %s: the previous state is %s's; %s starts afresh",
                    claim.round_number,
                    plan.experiment_id,
                    state.algorithm,
                    aggregator.name,
                )
                state = None
        return RoundContext(
            round_number=claim.round_number,
            parent=(lambda: self.weights.open_weights(parent_key)) if parent_key is not None else None,
            state=state,
            prepared=plan.prepared,
            noise=self._noise(plan.experiment_id, claim.round_number, plan.privacy["noise_stddev"])
            if plan.privacy is not None
            else None,
        )

    def _start_uploads(self, plan: RoundPlan) -> RoundPlan:
        """Start each output's upload, one part per section and shard, and name them in the claim's
        manifest first, so that whoever takes this claim over can abort them. An output of a header
        alone (a state of scalars only) is written now, whole."""
        outputs = plan.outputs(self._aggregator(plan.claim))
        upload_ids: list[str | None] = []
        try:
            for output in outputs:
                if output.sections:
                    upload_ids.append(self.weights.start_upload(output.key, output.part_sizes()))
                else:
                    self._put(output, [output.header])
                    upload_ids.append(None)
            uploads = [[o.key, u] for o, u in zip(outputs, upload_ids, strict=True) if u is not None]
            manifest = json.dumps({"shards": len(plan.shards), "uploads": uploads}).encode()
            self.weights.put(plan.manifest_key, io.BytesIO(manifest))
        except BaseException:
            for output, upload_id in zip(outputs, upload_ids, strict=False):
                if upload_id is not None:
                    self.weights.abort_upload(output.key, upload_id)
            raise
        return replace(plan, upload_ids=tuple(upload_ids))

    # Computing

    def _finish_shard(self, plan: RoundPlan, index: int) -> AggregateRecord | None:
        if len(plan.shards) == 1:
            return self.metadata.commit_round(plan.claim, self._write_whole(plan))
        started = time.perf_counter()
        with self._lease_kept(plan.claim), PeakMemory() as peak:
            shard = self._shard_data(plan, index)
        self._store_shard(plan, index, shard, peak.bytes)
        del shard
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

    def _shard_data(self, plan: RoundPlan, index: int) -> ShardData:
        """The shard's range of the aggregate's data (and of the new state); an unreadable update is
        quarantined before its error goes on."""
        claim = plan.claim
        aggregator = self._aggregator(claim)
        try:
            return aggregate_shard(
                aggregator,
                self._inputs(plan),
                plan.spec,
                plan.shards[index],
                self._context(plan, aggregator),
                # each update's figures would be released without noise: a private round has none
                measure=plan.privacy is None,
            )
        except UpdateUnreadable as error:
            self.metadata.quarantine_update(claim, error.update_id, error.reason)
            raise

    def _write_whole(self, plan: RoundPlan) -> AggregateDraft:
        """A round of one shard: compute it and store each output in one pass, under the claim's own keys."""
        started = time.perf_counter()
        aggregator = self._aggregator(plan.claim)
        with self._lease_kept(plan.claim), PeakMemory() as peak:
            shard = self._shard_data(plan, 0)
            outputs = plan.outputs(aggregator)
            stored = [
                self._put(output, [output.header, *(data.data for data in sections)])
                for output, sections in zip(outputs, shard.sections, strict=False)
            ]
            sums = shard.sums
            del shard
        return self._draft(
            plan, aggregator, stored, duration=time.perf_counter() - started, peak=peak.bytes, sums=sums
        )

    def _put(self, output: Output, parts: list[Part]) -> tuple[int, str]:
        """Store an output whole; its size (checked) and SHA-256, measured on the way."""
        stored = self.weights.put(output.key, ConcatStream(parts))
        self._check_size(output, stored.size)
        return stored.size, stored.sha256

    def _store_shard(self, plan: RoundPlan, index: int, shard: ShardData, peak: int) -> None:
        """Store the shard's sections as their parts of each output's upload, then its record (the parts,
        for joining, and the shard's peak memory); a shard whose round was meanwhile committed or
        taken over removes its record again rather than leave it behind."""
        claim = plan.claim
        outputs = plan.outputs(self._aggregator(claim))
        parts = []
        try:
            for which, (output, upload_id, sections) in enumerate(
                zip(outputs, plan.upload_ids, shard.sections, strict=False)
            ):
                for section, data in enumerate(sections):
                    number = output.part_number(section, index)
                    body = ConcatStream([output.header, data.data] if number == 1 else [data.data])
                    parts.append([which, asdict(self.weights.put_part(output.key, upload_id, number, body))])
        except ObjectNotFound:  # the upload is over: joined by the round's commit, or aborted
            self._check_current(claim)
            raise
        sums = shard.sums.to_json() if shard.sums is not None else None
        record = json.dumps({"parts": parts, "peak_memory_bytes": peak, "sums": sums}).encode()
        self.weights.put(plan.shard_key(index), io.BytesIO(record))
        try:
            self._check_current(claim)
        except LeaseLost:
            self.weights.delete(plan.shard_key(index))
            raise

    def _combine(self, plan: RoundPlan) -> AggregateRecord | None:
        """Join the shards' parts into each output, hash them as stored, and commit once; None if a twin
        of this shard joined them first."""
        claim = plan.claim
        aggregator = self._aggregator(claim)
        with self._lease_kept(claim), PeakMemory() as peak:
            records = [self._shard_record(plan, i) for i in range(len(plan.shards))]
            stored = []
            for which, (output, upload_id) in enumerate(
                zip(plan.outputs(aggregator), plan.upload_ids, strict=True)
            ):
                if upload_id is not None:
                    parts = sorted(
                        (UploadedPart(**part) for r in records for of, part in r["parts"] if of == which),
                        key=lambda part: part.number,
                    )
                    try:
                        self.weights.complete_upload(output.key, upload_id, parts)
                    except ObjectNotFound:
                        return None
                stored.append(self._measure(output))
        duration = max(0.0, self.clock() - claim.claimed_at)
        shard_peak = max(r["peak_memory_bytes"] for r in records)
        sums = Sums.total(Sums.from_json(r["sums"]) for r in records if r.get("sums") is not None)
        draft = self._draft(
            plan, aggregator, stored, duration=duration, peak=max(peak.bytes, shard_peak), sums=sums
        )
        record = self.metadata.commit_round(claim, draft)
        self._drop_records(plan)  # the uploads are joined: no abort to send
        return record

    def _shard_record(self, plan: RoundPlan, index: int) -> dict[str, Any]:
        try:
            with self.weights.open(plan.shard_key(index)) as stream:
                return json.load(stream)
        except ObjectNotFound:  # removed by a twin's commit, or by a worker that took the round over
            self._check_current(plan.claim)
            raise InvalidWeights(f"shard {index} of the round left no record") from None

    def _measure(self, output: Output) -> tuple[int, str]:
        """Size (checked) and SHA-256 of a stored output, read once."""
        digest = hashlib.sha256()
        size = 0
        with self.weights.open(output.key) as stream:
            while chunk := stream.read(_READ_BYTES):
                digest.update(chunk)
                size += len(chunk)
        self._check_size(output, size)
        return size, digest.hexdigest()

    def _check_size(self, output: Output, size: int) -> None:
        """InvalidWeights (and the object removed) unless it is the size its header and sections make."""
        if size != output.size:
            self.weights.delete(output.key)
            raise InvalidWeights(f"{output.key} is {size:,} bytes, not {output.size:,}")

    def _draft(
        self,
        plan: RoundPlan,
        aggregator: Aggregator,
        stored: list[tuple[int, str]],
        *,
        duration: float,
        peak: int,
        sums: Sums | None = None,
    ) -> AggregateDraft:
        """The round's record, from its outputs as stored (size and hash): the aggregate, and the state."""
        outputs = plan.outputs(aggregator)
        inputs = canonical_order(self._inputs(plan))
        context = self._context(plan, aggregator)
        shares = aggregator.round_shares(inputs, context)
        report = _plain_json(
            aggregator.report(inputs, context),
            f"aggregator {aggregator.name!r}: report",
        )
        (size, digest), *state = stored
        mode = asynchronous.AsyncMode.from_config(plan.claim.experiment.asynchronous)
        return AggregateDraft(
            weights_key=outputs[0].key,
            content_id=digest,
            size_bytes=size,
            update_ids=tuple(i.update_id for i in inputs),
            input_weights=tuple(shares) if shares is not None else None,
            aggregator=plan.claim.experiment.aggregator,
            aggregator_params=aggregator.params.to_dict(),
            duration_seconds=duration,
            peak_memory_bytes=peak or None,
            state_key=outputs[1].key if state else None,
            state_content_id=state[0][1] if state else None,
            report=self._report(plan, inputs, report, mode, sums, shares),
        )

    @staticmethod
    def _report(
        plan: RoundPlan,
        inputs: list[UpdateInput],
        aggregator_report: Any,
        mode: asynchronous.AsyncMode | None,
        sums: Sums | None = None,
        shares: list[float] | None = None,
    ) -> dict[str, Any]:
        """The round's report, by section: the aggregator's own, the norm screening's, the clients the
        round selected, an asynchronous round's staleness mix, a private round's accounting, and each
        update's figures against the aggregate (``fma_core.update_stats``)."""
        report: dict[str, Any] = {}
        if mode is not None:
            bases = {u.update_id: u.base_round for u in plan.claim.updates}
            taus = {
                i.update_id: asynchronous.staleness_of(plan.claim.round_number, bases[i.update_id])
                for i in inputs
            }
            report[asynchronous.REPORT_SECTION] = asynchronous.report(mode, taus)
        if aggregator_report:
            report["aggregator"] = dict(aggregator_report)
        if plan.norms is not None:
            report[REPORT_SECTION] = Screening.from_json(plan.norms).report(i.update_id for i in inputs)
        if plan.claim.selection is not None:
            report["sampling"] = dict(plan.claim.selection)
        if plan.privacy is not None:
            policy = PrivacyPolicy.from_config(plan.claim.experiment.privacy)
            assert policy is not None
            report[PRIVACY_SECTION] = PrivateRound.from_json(plan.privacy).report(policy)
        if sums is not None and sums.updates:
            by_id = (
                dict(zip((i.update_id for i in inputs), shares, strict=True)) if shares is not None else None
            )
            report[UPDATES_SECTION] = _plain_json(updates_report(sums, by_id), "the updates' figures")
        return report

    def _aggregator(self, claim: RoundClaim) -> Aggregator:
        """The experiment's algorithm; an asynchronous experiment's fedavg or mean is the buffered step
        x + η·Δ (``fma_core.aggregators.buffered``)."""
        config = claim.experiment
        aggregator = create_aggregator(config.aggregator, config.aggregator_params, threads=self.threads)
        mode = asynchronous.AsyncMode.from_config(config.asynchronous)
        if mode is None or config.aggregator not in asynchronous.BUFFERED_STEP:
            return aggregator
        weighted = bool(getattr(aggregator.params, "weighted", False))
        rate = mode.server_learning_rate if mode.server_learning_rate is not None else 1.0
        return BufferedStep({"server_learning_rate": rate, "weighted": weighted}, threads=self.threads)

    def _inputs(self, plan: RoundPlan) -> list[UpdateInput]:
        wanted = set(plan.update_ids)
        bases = SharedBases(self.weights.open_weights)
        if plan.privacy is not None:  # every update weighs the same, its change scaled by its factor
            factors = plan.privacy["factors"]
            return [
                replace(self._input(u, bases, factors[u.update_id]), num_examples=1)
                for u in plan.claim.updates
                if u.update_id in wanted
            ]
        clip = plan.norms["clip"] if plan.norms is not None else {}
        inputs = [
            self._input(u, bases, clip.get(u.update_id)) for u in plan.claim.updates if u.update_id in wanted
        ]
        mode = asynchronous.AsyncMode.from_config(plan.claim.experiment.asynchronous)
        if mode is None:
            return inputs
        rounds = {u.update_id: u.base_round for u in plan.claim.updates}
        number = plan.claim.round_number
        return [
            replace(i, discount=mode.staleness(asynchronous.staleness_of(number, rounds[i.update_id])))
            for i in inputs
        ]

    def _input(self, update: UpdateRecord, bases: SharedBases, clip: float | None = None) -> UpdateInput:
        """The update as its algorithm reads it: its trained model (a delta reads as its base plus itself),
        and its change from its base when the base is known (a delta as sent); with a clip factor, both
        with the change scaled by it."""
        open_update = lambda: self.weights.open_weights(update.weights_key)  # noqa: E731
        base_key = update.base_weights_key
        if clip is not None:
            assert base_key is not None, "only an update with a known base is measured, so clipped"
            return self._clipped(update, bases, clip)
        if update.delta:
            assert base_key is not None, "a delta's record names its base"
            return UpdateInput(
                update_id=update.update_id,
                content_id=update.content_id,
                num_examples=update.num_examples,
                open=lambda: _with_base(DeltaReader, open_update, bases, base_key),
                open_change=open_update,
            )
        return UpdateInput(
            update_id=update.update_id,
            content_id=update.content_id,
            num_examples=update.num_examples,
            open=open_update,
            open_change=(lambda: _with_base(ChangeReader, open_update, bases, base_key))
            if base_key
            else None,
        )

    def _clipped(self, update: UpdateRecord, bases: SharedBases, factor: float) -> UpdateInput:
        """The update with its change scaled by ``factor``: ``open`` reads its base plus the scaled change,
        ``open_change`` the scaled change, whichever the aggregator asks for."""
        base_key = update.base_weights_key
        assert base_key is not None

        def change() -> WeightsReader:
            if update.delta:
                return self.weights.open_weights(update.weights_key)
            return _with_base(
                ChangeReader, lambda: self.weights.open_weights(update.weights_key), bases, base_key
            )

        def scaled(with_base: bool) -> WeightsReader:
            if not with_base:
                return ScaledChangeReader(change(), factor)
            return _with_base(
                lambda reader, base: ScaledChangeReader(reader, factor, base), change, bases, base_key
            )

        return UpdateInput(
            update_id=update.update_id,
            content_id=update.content_id,
            num_examples=update.num_examples,
            open=lambda: scaled(True),
            open_change=lambda: scaled(False),
        )

    # Leases, failures and what a claim leaves behind

    def _waiting(self, experiment_id: str) -> RoundOutcome | None:
        """The outcome without claiming when nothing is pending or the policy is not met; else None.
        Below the policy's least count only the pending updates are counted: each accepted update asks,
        and reading them all each time would make a round of N updates cost N² rows."""
        count = self.metadata.pending_count(experiment_id)
        if not count:
            return RoundOutcome("idle", experiment_id, reason="nothing pending")
        config = self.metadata.experiment(experiment_id)
        policy = asynchronous.effective_policy(config.round_policy, config.asynchronous)
        if count < policy.least_updates():  # not ready, and no deadline to wake up for
            return RoundOutcome("not_ready", experiment_id, reason="the round policy is not met yet")
        pending = self.metadata.pending_updates(experiment_id)
        if not pending:  # another worker's claim took them since the count
            return RoundOutcome("idle", experiment_id, reason="nothing pending")
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

    def _failed(self, plan: RoundPlan, error: Exception, *, where: str = "") -> RoundOutcome:
        """Give the round back now rather than at lease expiry, with the reason; its updates stay pending.
        A store that failed (``StoreUnavailable``, or an ``OSError``: a disk's, a socket's) quarantines
        nothing: the sweep runs the round again, with every update. An error that is not FMA's own (a
        bug) is raised once the round is given back."""
        if isinstance(error, OSError):
            error = StoreUnavailable(f"{type(error).__name__}: {error}")
        self.fail_round(plan, f"{where}{type(error).__name__}: {error}")
        if not isinstance(error, FmaError):
            raise error
        if isinstance(error, StoreUnavailable):
            logger.warning(
                "round %s of %s given back, the weight store is unavailable: %s; its %s updates stay "
                "pending and the sweep runs it again",
                plan.claim.round_number,
                plan.experiment_id,
                error,
                len(plan.claim.updates),
            )
            return RoundOutcome(
                "failed",
                plan.experiment_id,
                quarantined=plan.quarantined,
                reason=f"{where}the weight store is unavailable: {error}",
            )
        logger.warning("round %s of %s failed: %s", plan.claim.round_number, plan.experiment_id, error)
        unreadable = (error.update_id,) if isinstance(error, UpdateUnreadable) else ()
        return RoundOutcome(
            "failed",
            plan.experiment_id,
            quarantined=plan.quarantined + unreadable,
            reason=str(error),
            retry=bool(unreadable),
        )

    def _remove_abandoned(self, experiment_id: str, round_number: int, token: str) -> None:
        """Remove the shard records, the uploads and the uncommitted outputs of a claim whose lease expired;
        a failure here is logged, never allowed to block the round."""
        try:
            manifest = manifest_key(experiment_id, round_number, token)
            try:
                with self.weights.open(manifest) as stream:
                    started = json.load(stream)
            except ObjectNotFound:
                started = {"shards": 0, "uploads": []}
            prefix = shards_prefix(experiment_id, round_number, token)
            for index in range(int(started["shards"])):
                self.weights.delete(f"{prefix}/{index}.json")
            for key, upload_id in started.get("uploads", []):
                self.weights.abort_upload(key, upload_id)
            self.weights.delete(manifest)
            self.weights.delete(aggregate_key(experiment_id, round_number, token))
            self.weights.delete(state_key(experiment_id, round_number, token))
        except Exception:
            logger.exception("removing what round %s of %s left behind failed", round_number, experiment_id)

    def _check_current(self, claim: RoundClaim) -> None:
        """LeaseLost if the claim was committed or taken over (renewing it otherwise)."""
        self.metadata.renew_lease(claim, lease_seconds=self.lease_seconds)

    def _lease_kept(self, claim: RoundClaim) -> LeaseKeeper:
        return LeaseKeeper(self.metadata, claim, lease_seconds=self.lease_seconds)

    def _drop_shards(self, plan: RoundPlan) -> None:
        """Give up a sharded round's uploads (their parts) and remove its records and manifest."""
        if not plan.upload_ids:
            return
        for output, upload_id in zip(
            plan.outputs(self._aggregator(plan.claim)), plan.upload_ids, strict=True
        ):
            if upload_id is not None:
                self.weights.abort_upload(output.key, upload_id)
        self._drop_records(plan)

    def _drop_records(self, plan: RoundPlan) -> None:
        """Remove a sharded round's records and manifest (once its uploads are joined, nothing else is left)."""
        for index in range(len(plan.shards)):
            self.weights.delete(plan.shard_key(index))
        self.weights.delete(plan.manifest_key)


def check_privacy(aggregator: Aggregator, update_norm: Any, spec: TensorSpec | None) -> None:
    """ConfigurationError unless differential privacy can run with this algorithm, norm rule and spec:
    an algorithm whose result is the equal-share mean of the updates, no ``update_norm`` (privacy clips
    every update itself, and refusing by norm would make who counts depend on the data), and only
    floating-point tensors (the clip bounds those; an integer tensor would pass unbounded)."""
    if not aggregator.supports_privacy:
        raise ConfigurationError(
            f"aggregator {aggregator.name!r} is not usable with differential privacy: use a linear one "
            "(fedavg, mean) or a server optimizer (fedavgm, fedadam, fedyogi, fedadagrad)"
        )
    if update_norm is not None:
        raise ConfigurationError(
            "update_norm does not combine with privacy: privacy clips every update itself; remove update_norm"
        )
    integers = [t.name for t in spec or () if t.numpy_dtype.kind != "f"]
    if integers:
        raise ConfigurationError(
            f"privacy bounds floating-point tensors only, and the spec has others ({', '.join(integers[:5])})"
        )


def _with_base(
    combine: Callable[[WeightsReader, WeightsReader], WeightsReader],
    open_update: Callable[[], WeightsReader],
    bases: SharedBases,
    base_key: str,
) -> WeightsReader:
    """``combine(update, base)`` over the update's reader and a shared reader of its base."""
    reader = open_update()
    try:
        base = bases.open(base_key)
    except BaseException:
        reader.close()
        raise
    return combine(reader, base)


def _plain_json(value: Any, what: str) -> Any:
    """``value`` as it reads back from JSON, the same on every shard and in every store; a value JSON
    cannot carry (NaN, a numpy scalar) is the algorithm's error, said as such."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"{what} must return plain JSON: {error}") from None
