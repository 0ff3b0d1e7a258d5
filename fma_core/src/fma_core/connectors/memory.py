"""A thread-safe, in-memory MetadataStore for tests, simulations and notebooks."""

from __future__ import annotations

import itertools
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fma_core.connectors.metadata import (
    AggregateDraft,
    AggregateRecord,
    ExperimentConfig,
    MetadataStore,
    RoundClaim,
    UpdateRecord,
)
from fma_core.errors import LeaseLost

PENDING, CONSUMED, QUARANTINED = "pending", "consumed", "quarantined"


@dataclass
class _Update:
    record: UpdateRecord
    status: str = PENDING
    aggregate_id: str | None = None
    reason: str | None = None


class InMemoryMetadataStore(MetadataStore):
    """Keeps everything in dictionaries behind one lock; ``clock`` is injectable for tests."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._experiments: dict[str, ExperimentConfig] = {}
        self._enrolled: dict[str, set[str]] = {}
        self._updates: dict[str, _Update] = {}
        self._aggregates: dict[str, list[AggregateRecord]] = {}
        self._claims: dict[str, RoundClaim] = {}
        self._failures: dict[str, list[str]] = {}
        self._initial: dict[str, str | None] = {}
        self._secrets: dict[str, bytes] = {}
        self._spent: dict[str, str] = {}  # experiment → why its privacy budget stopped it
        self._ids = itertools.count(1)

    # Setting up (what the API does in a real deployment).

    def create_experiment(
        self,
        config: ExperimentConfig,
        *,
        clients: Iterable[str] = (),
        initial_weights_key: str | None = None,
        privacy_secret: bytes | None = None,
    ) -> None:
        """``initial_weights_key``: the initial model (round 0), if the experiment has one;
        ``privacy_secret``: the key of its privacy noise (made on first need when None), for a simulation
        that must draw the same noise twice."""
        with self._lock:
            if privacy_secret is not None:
                self._secrets[config.experiment_id] = privacy_secret
            self._experiments[config.experiment_id] = config
            self._initial[config.experiment_id] = initial_weights_key
            self._enrolled[config.experiment_id] = set(clients)
            self._aggregates[config.experiment_id] = []

    def enroll(self, experiment_id: str, client_id: str) -> None:
        with self._lock:
            self._enrolled[experiment_id].add(client_id)

    def add_update(
        self,
        experiment_id: str,
        *,
        client_id: str,
        weights_key: str,
        content_id: str,
        num_examples: int,
        base_round: int = 0,
        update_id: str | None = None,
        delta: bool = False,
        base_weights_key: str | None = None,
    ) -> UpdateRecord:
        """Store a pending update, trained from round ``base_round``'s model (or from the weights at
        ``base_weights_key``), a delta on it when ``delta``; the same ``update_id`` twice returns the
        first (idempotent)."""
        with self._lock:
            if experiment_id not in self._experiments:
                raise LookupError(f"no experiment {experiment_id!r}")
            base_weights_key = base_weights_key or self._weights_of_round(experiment_id, base_round)
            if delta and base_weights_key is None:
                raise LookupError(
                    f"a delta needs its base: experiment {experiment_id!r} has no round {base_round}"
                )
            update_id = update_id or f"u{next(self._ids)}"
            if update_id in self._updates:
                return self._updates[update_id].record
            record = UpdateRecord(
                update_id=update_id,
                experiment_id=experiment_id,
                client_id=client_id,
                weights_key=weights_key,
                content_id=content_id,
                num_examples=num_examples,
                base_round=base_round,
                received_at=self._clock(),
                base_weights_key=base_weights_key,
                delta=delta,
            )
            self._updates[update_id] = _Update(record)
            return record

    # Reading back (what the API and tests inspect).

    def aggregates(self, experiment_id: str) -> list[AggregateRecord]:
        with self._lock:
            return list(self._aggregates[experiment_id])

    def update_status(self, update_id: str) -> tuple[str, str | None]:
        """``(status, aggregate id or quarantine reason)`` of an update."""
        with self._lock:
            update = self._updates[update_id]
            return update.status, update.aggregate_id or update.reason

    def budget_spent_detail(self, experiment_id: str) -> str | None:
        """Why the experiment's privacy budget stopped its rounds; None while it runs."""
        with self._lock:
            return self._spent.get(experiment_id)

    def failures(self, experiment_id: str) -> list[str]:
        with self._lock:
            return list(self._failures.get(experiment_id, []))

    # MetadataStore

    def experiment(self, experiment_id: str) -> ExperimentConfig:
        with self._lock:
            try:
                return self._experiments[experiment_id]
            except KeyError:
                raise LookupError(f"no experiment {experiment_id!r}") from None

    def pending_updates(self, experiment_id: str) -> list[UpdateRecord]:
        with self._lock:
            return self._pending(experiment_id)

    def enrolled_clients(self, experiment_id: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._enrolled[experiment_id])

    def experiments_to_sweep(self, *, now: float) -> list[str]:
        with self._lock:
            waiting = {u.record.experiment_id for u in self._updates.values() if u.status == PENDING}
            live = {e for e, claim in self._claims.items() if claim.expires_at > now}
            return sorted(waiting - live - set(self._spent))

    def claim_round(self, experiment_id: str, *, worker: str, lease_seconds: float) -> RoundClaim | None:
        with self._lock:
            now = self._clock()
            current = self._claims.get(experiment_id)
            if (current is not None and current.expires_at > now) or experiment_id in self._spent:
                return None
            pending = self._pending(experiment_id)
            if not pending:
                return None
            history = self._aggregates[experiment_id]
            claim = RoundClaim(
                experiment=self._experiments[experiment_id],
                token=uuid.uuid4().hex,
                worker=worker,
                round_number=len(history) + 1,
                parent_aggregate_id=history[-1].aggregate_id if history else None,
                updates=tuple(pending),
                enrolled_clients=frozenset(self._enrolled[experiment_id]),
                claimed_at=now,
                expires_at=now + lease_seconds,
                taken_over_from=(current.round_number, current.token) if current is not None else None,
                parent_weights_key=self._weights_of_round(experiment_id, len(history)),
                parent_state_key=history[-1].draft.state_key if history else None,
            )
            self._claims[experiment_id] = claim
            return claim

    def recent_reports(self, experiment_id: str, *, rounds: int) -> list[Mapping[str, Any]]:
        with self._lock:
            return [a.draft.report for a in reversed(self._aggregates[experiment_id][-rounds:])]

    def privacy_secret(self, experiment_id: str) -> bytes:
        with self._lock:
            return self._secrets.setdefault(experiment_id, secrets.token_bytes(32))

    def contributions(self, experiment_id: str) -> Mapping[str, int]:
        with self._lock:
            rounds: dict[str, set[str]] = {}
            for update in self._updates.values():
                if update.status == CONSUMED and update.record.experiment_id == experiment_id:
                    rounds.setdefault(update.record.client_id, set()).add(update.aggregate_id or "")
            return {client: len(aggregates) for client, aggregates in rounds.items()}

    def budget_spent(self, experiment_id: str, detail: str) -> None:
        with self._lock:
            self._spent.setdefault(experiment_id, detail)

    def renew_lease(self, claim: RoundClaim, *, lease_seconds: float) -> RoundClaim:
        with self._lock:
            self._check_current(claim)
            renewed = replace(claim, expires_at=self._clock() + lease_seconds)
            self._claims[claim.experiment.experiment_id] = renewed
            return renewed

    def release_round(self, claim: RoundClaim, *, failure: str | None = None) -> None:
        with self._lock:
            experiment_id = claim.experiment.experiment_id
            current = self._claims.get(experiment_id)
            if current is not None and current.token == claim.token:
                del self._claims[experiment_id]
            if failure:
                self._failures.setdefault(experiment_id, []).append(failure)

    def quarantine_update(self, claim: RoundClaim, update_id: str, reason: str) -> None:
        with self._lock:
            self._check_current(claim)
            update = self._updates[update_id]
            if update.status == PENDING:
                update.status, update.reason = QUARANTINED, reason

    def commit_round(self, claim: RoundClaim, draft: AggregateDraft) -> AggregateRecord:
        with self._lock:
            self._check_current(claim)
            experiment_id = claim.experiment.experiment_id
            claimed = {u.update_id for u in claim.updates}
            for update_id in draft.update_ids:
                update = self._updates.get(update_id)
                if update_id not in claimed or update is None or update.status != PENDING:
                    raise LeaseLost(f"update {update_id} is not a pending update of this claim")
            record = AggregateRecord(
                aggregate_id=f"a{next(self._ids)}",
                experiment_id=experiment_id,
                round_number=claim.round_number,
                parent_aggregate_id=claim.parent_aggregate_id,
                draft=draft,
                created_at=self._clock(),
            )
            for update_id in draft.update_ids:
                update = self._updates[update_id]
                update.status, update.aggregate_id = CONSUMED, record.aggregate_id
            self._aggregates[experiment_id].append(record)
            del self._claims[experiment_id]
            return record

    def _weights_of_round(self, experiment_id: str, round_number: int) -> str | None:
        """The global model after round ``round_number`` (0: the initial model), if there is one."""
        if round_number == 0:
            return self._initial[experiment_id]
        history = self._aggregates[experiment_id]
        return history[round_number - 1].draft.weights_key if round_number <= len(history) else None

    def _pending(self, experiment_id: str) -> list[UpdateRecord]:
        updates = [u.record for u in self._updates.values() if u.status == PENDING]
        return sorted((u for u in updates if u.experiment_id == experiment_id), key=lambda u: u.received_at)

    def _check_current(self, claim: RoundClaim) -> None:
        current = self._claims.get(claim.experiment.experiment_id)
        if current is None or current.token != claim.token:
            raise LeaseLost(f"round {claim.round_number} of {claim.experiment.experiment_id} was taken over")
