"""The metadata a round needs, and ``MetadataStore``: the interface the round engine drives.

Records are plain frozen dataclasses, so the engine and the policies never see an ORM object.
fma-django implements the store on PostgreSQL or SQLite; ``InMemoryMetadataStore`` serves tests
and simulations. The contract every implementation keeps:

- ``claim_round`` gives at most one live claim per experiment; the claim carries a fencing token
  and a snapshot of the pending updates; an expired claim may be taken over by another worker,
  whose claim then names the one it took over (``taken_over_from``);
- ``round_started`` is called only for a claim whose snapshot meets the round policy, so a
  claim given back as not ready leaves no "started" behind;
- ``commit_round`` records the aggregate and marks exactly its updates consumed, in one
  transaction, and only if the claim's token is still the current one (else ``LeaseLost``);
- an update is pending, consumed by exactly one aggregate, or quarantined with a reason;
- ``experiments_to_sweep`` lists what a scheduler must look at again: experiments with pending
  updates and no live claim (a deadline may have passed, or a worker died holding the round).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fma_core.policies import PendingUpdate, RoundState
from fma_core.weights import TensorSpec


@dataclass(frozen=True)
class ExperimentConfig:
    """What the round engine needs to know of an experiment."""

    experiment_id: str
    aggregator: str = "fedavg"
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)
    round_policy: Any = None  # a fma_core.policies configuration
    tensor_spec: TensorSpec | None = None
    max_staleness: int | None = None  # rounds an update's base may lag behind; None: any
    update_norm: Mapping[str, Any] | None = None  # a fma_core.norms bound on each update's change; None: none
    # buffered asynchronous rounds (``fma_core.asynchronous``): K updates a round, each discounted by its
    # staleness; None: synchronous rounds
    asynchronous: Mapping[str, Any] | None = None
    privacy: Mapping[str, Any] | None = None  # a fma_core.privacy setting (no secret in it); None: no DP


@dataclass(frozen=True)
class UpdateRecord:
    """A stored update waiting for (or consumed by) a round."""

    update_id: str
    experiment_id: str
    client_id: str
    weights_key: str
    content_id: str
    num_examples: int
    base_round: int  # round number of the aggregate it was trained from; 0 = the initial model
    received_at: float
    base_weights_key: str | None = None  # the weights it was trained from, when the store knows them
    delta: bool = False  # sent as trained minus base: it reads as its base plus itself


@dataclass(frozen=True)
class RoundClaim:
    """A worker's exclusive, expiring right to turn an experiment's pending updates into a round."""

    experiment: ExperimentConfig
    token: str
    worker: str
    round_number: int
    parent_aggregate_id: str | None
    updates: tuple[UpdateRecord, ...]
    enrolled_clients: frozenset[str]
    claimed_at: float
    expires_at: float
    # (round number, token) of the expired claim this one took over: its worker died or stalled, and the
    # objects it may have written (shard records and parts, an uncommitted aggregate) are this one's to remove
    taken_over_from: tuple[int, str] | None = None
    # the current global model (the parent aggregate's weights, or the initial model's before round 1)
    # and the server state the parent's round left, which a stateful algorithm continues from
    parent_weights_key: str | None = None
    parent_state_key: str | None = None
    # an experiment that samples clients (``fma_core.sampling``): the round's draw as plain JSON (seed, mode,
    # the selected clients), which the engine keeps in the round's report; ``enrolled_clients`` then holds
    # the selected clients still enrolled, the ones the round policy counts
    selection: Mapping[str, Any] | None = None

    def state(self, now: float) -> RoundState:
        return RoundState(
            updates=tuple(PendingUpdate(u.client_id, u.received_at) for u in self.updates),
            enrolled_clients=self.enrolled_clients,
            now=now,
        )


@dataclass(frozen=True)
class AggregateDraft:
    """A computed aggregate, written to the weight store, waiting to be committed."""

    weights_key: str
    content_id: str
    size_bytes: int
    update_ids: tuple[str, ...]
    input_weights: tuple[float, ...] | None  # each update's share when the algorithm is linear
    aggregator: str
    aggregator_params: Mapping[str, Any]
    duration_seconds: float
    peak_memory_bytes: int | None = None  # highest RSS of the worker(s) while computing the round
    state_key: str | None = None  # the algorithm's server state after this round (``fma_core.state``)
    state_content_id: str | None = None  # its SHA-256
    # what the round decided that the weights do not show, by section (plain JSON): "aggregator" is the
    # algorithm's own (``Aggregator.report``: a selection, each update's score); "sampling" the clients the
    # round selected and the seed they were drawn from (``RoundClaim.selection``)
    report: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregateRecord:
    """A committed aggregate: one version of the global model."""

    aggregate_id: str
    experiment_id: str
    round_number: int
    parent_aggregate_id: str | None
    draft: AggregateDraft
    created_at: float


class MetadataStore(ABC):
    """Experiments, updates, rounds and aggregates, as the round engine sees them."""

    @abstractmethod
    def experiment(self, experiment_id: str) -> ExperimentConfig:
        """The experiment's configuration; LookupError if there is none."""

    @abstractmethod
    def pending_updates(self, experiment_id: str) -> list[UpdateRecord]:
        """Updates accepted and not yet consumed or quarantined, oldest first."""

    def pending_count(self, experiment_id: str) -> int:
        """How many updates ``pending_updates`` holds; a store that can count without reading them should
        (the engine asks before each claim, and a round's policy often needs no more)."""
        return len(self.pending_updates(experiment_id))

    @abstractmethod
    def enrolled_clients(self, experiment_id: str) -> frozenset[str]:
        """The clients the current round's policy counts: those enrolled (not revoked), or, when the
        experiment samples clients, those of them selected for the round."""

    @abstractmethod
    def experiments_to_sweep(self, *, now: float) -> list[str]:
        """Experiments open to rounds with pending updates and no live claim at ``now``."""

    @abstractmethod
    def claim_round(self, experiment_id: str, *, worker: str, lease_seconds: float) -> RoundClaim | None:
        """Claim the next round, or None when nothing is pending or another worker's lease is live."""

    def round_started(self, claim: RoundClaim) -> None:  # noqa: B027 - a store may keep no log
        """The claimed round really starts (its snapshot meets the policy): record it, e.g. in an event log.

        Not part of ``claim_round``: the engine checks the policy on the claimed snapshot only after
        claiming, and gives back a claim that is not ready (another worker's round took updates first).
        """

    @abstractmethod
    def recent_reports(self, experiment_id: str, *, rounds: int) -> list[Mapping[str, Any]]:
        """The reports of the experiment's last ``rounds`` committed aggregates, newest first: what an
        adaptive rule (``fma_core.norms``) reads its history from, so it survives restarts and takeovers."""

    @abstractmethod
    def renew_lease(self, claim: RoundClaim, *, lease_seconds: float) -> RoundClaim:
        """Extend a live claim; LeaseLost if another worker has taken the round over."""

    @abstractmethod
    def release_round(self, claim: RoundClaim, *, failure: str | None = None) -> None:
        """Give the round up, its updates left pending; ``failure`` says why when it failed."""

    @abstractmethod
    def quarantine_update(self, claim: RoundClaim, update_id: str, reason: str) -> None:
        """Set a claimed update aside for good, with the reason; LeaseLost if the claim is stale."""

    @abstractmethod
    def commit_round(self, claim: RoundClaim, draft: AggregateDraft) -> AggregateRecord:
        """Atomically record the aggregate and mark exactly ``draft.update_ids`` consumed."""

    def privacy_secret(self, experiment_id: str) -> bytes:
        """The experiment's secret its differential-privacy noise is keyed with (made on first need, kept
        for good): never in the experiment's configuration, a plan, a report or a log."""
        raise NotImplementedError(f"{type(self).__name__} keeps no privacy secret")

    def contributions(self, experiment_id: str) -> Mapping[str, int]:
        """For each client, how many committed rounds its updates went into: what the privacy accountant
        charges it for (``fma_core.privacy``), read from the lineage so restarts see it unchanged."""
        raise NotImplementedError(f"{type(self).__name__} counts no contributions")

    def budget_spent(self, experiment_id: str, detail: str) -> None:
        """The experiment's privacy budget cannot pay for another round: stop its rounds for good."""
        raise NotImplementedError(f"{type(self).__name__} cannot record a spent budget")

    def thread_finished(self) -> None:  # noqa: B027 - most stores hold nothing per thread
        """A helper thread that used the store (the lease heartbeat) ends: release what it holds, such
        as its own database connection."""
