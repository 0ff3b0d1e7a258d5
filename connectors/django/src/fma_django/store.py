"""``DjangoMetadataStore``: fma-core's MetadataStore on the Django ORM (PostgreSQL or SQLite).

The round lease is one row per experiment (``RoundLease``), taken and given back only with
conditional UPDATEs (``... WHERE token = '' OR expires_at <= now``), which both databases
execute atomically: of two workers, one updates the row and the other updates nothing. On
PostgreSQL the claim first locks the row with ``SKIP LOCKED``, so a second worker returns at
once instead of queueing behind the first. ``commit_round`` re-checks the token under a row
lock and marks exactly the drafted updates consumed, in the transaction that creates the
aggregate; the unique (experiment, round number) constraint is the last guard. An experiment that
samples clients has its round's draw made (or read) by the claim, which counts only the selected
clients and carries the draw into the round's report (``fma_django.sampling``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Q

from fma_core.connectors import (
    AggregateDraft,
    AggregateRecord,
    ExperimentConfig,
    MetadataStore,
    RoundClaim,
    UpdateRecord,
)
from fma_core.errors import LeaseLost
from fma_django import lifecycle, privacy, sampling, selectors
from fma_django.columns import EpochMicroseconds, UUIDText
from fma_django.models import (
    EventKind,
    Experiment,
    ModelAggregate,
    ModelUpdate,
    RoundLease,
    RoundSelection,
    UpdateKind,
    UpdateStatus,
)
from fma_django.services import effective_round_policy, event_record, experiment_spec


def experiment_config(experiment: Experiment) -> ExperimentConfig:
    return ExperimentConfig(
        experiment_id=str(experiment.pk),
        aggregator=experiment.aggregator,
        aggregator_params=dict(experiment.aggregator_params or {}),
        round_policy=effective_round_policy(experiment),
        tensor_spec=experiment_spec(experiment),
        # furthest_base_agg=k accepts the newest k aggregates, i.e. a lag of at most k-1 rounds
        max_staleness=experiment.furthest_base_agg - 1 if experiment.furthest_base_agg else None,
        update_norm=experiment.update_norm,
        asynchronous=experiment.asynchronous,
        privacy=experiment.privacy,
    )


class DjangoMetadataStore(MetadataStore):
    """Safe to use from many threads and processes at once; ``clock`` gives epoch seconds."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def experiment(self, experiment_id: str) -> ExperimentConfig:
        return experiment_config(self._row(experiment_id))

    def pending_updates(self, experiment_id: str) -> list[UpdateRecord]:
        return self._pending(int(experiment_id))

    def pending_count(self, experiment_id: str) -> int:
        return ModelUpdate.objects.filter(
            experiment_id=int(experiment_id), status=UpdateStatus.PENDING
        ).count()

    def enrolled_clients(self, experiment_id: str) -> frozenset[str]:
        return self._counted(self._row(experiment_id), None)[0]

    def experiments_to_sweep(self, *, now: float) -> list[str]:
        live = RoundLease.objects.exclude(token="").filter(expires_at__gt=now).values("experiment_id")
        waiting = (
            ModelUpdate.objects.filter(status=UpdateStatus.PENDING, experiment__allow_aggregation=True)
            .exclude(experiment_id__in=live)
            .values_list("experiment_id", flat=True)
            .distinct()
        )
        return [str(pk) for pk in sorted(set(waiting))]

    def claim_round(self, experiment_id: str, *, worker: str, lease_seconds: float) -> RoundClaim | None:
        experiment = self._row(experiment_id)
        if not experiment.allow_aggregation:
            return None
        RoundLease.objects.get_or_create(experiment=experiment)
        token = uuid.uuid4().hex
        with transaction.atomic():
            lease = RoundLease.objects.filter(pk=experiment.pk).values_list("round_number", "token")
            if connection.features.has_select_for_update_skip_locked:
                # PostgreSQL: a second worker skips a row being claimed instead of queueing behind it.
                previous = lease.select_for_update(skip_locked=True).first()
                if previous is None:
                    return None
            else:
                previous = lease.get()
            now = self._clock()
            parent = (
                ModelAggregate.objects.filter(experiment=experiment)
                .order_by("-round_number")
                .values_list("pk", "round_number", "weights_key", "state_key", named=True)
                .first()
            )
            round_number = parent.round_number + 1 if parent else 1
            taken = RoundLease.objects.filter(Q(token="") | Q(expires_at__lte=now), pk=experiment.pk).update(
                token=token, worker=worker, round_number=round_number, expires_at=now + lease_seconds
            )
            if not taken:
                return None
            pending = self._pending(experiment.pk)
            if not pending:
                RoundLease.objects.filter(pk=experiment.pk, token=token).update(token="", worker="")
                return None
            enrolled, selection = self._counted(experiment, round_number)
        return RoundClaim(
            experiment=experiment_config(experiment),
            token=token,
            worker=worker,
            round_number=round_number,
            parent_aggregate_id=str(parent.pk) if parent else None,
            updates=tuple(pending),
            enrolled_clients=enrolled,
            claimed_at=now,
            expires_at=now + lease_seconds,
            taken_over_from=previous if previous[1] else None,
            # before round 1 the global model is the initial one, if any, and no round has left a state
            parent_weights_key=parent.weights_key if parent else selectors.initial_weights_key(experiment.pk),
            parent_state_key=parent.state_key if parent else None,
            selection=selection.to_report() if selection is not None else None,
        )

    def recent_reports(self, experiment_id: str, *, rounds: int) -> list[Mapping[str, Any]]:
        return list(
            ModelAggregate.objects.filter(experiment_id=int(experiment_id))
            .order_by("-round_number")
            .values_list("report", flat=True)[:rounds]
        )

    def privacy_secret(self, experiment_id: str) -> bytes:
        return privacy.privacy_secret(int(experiment_id))

    def contributions(self, experiment_id: str) -> Mapping[str, int]:
        return privacy.contributions(int(experiment_id))

    def budget_spent(self, experiment_id: str, detail: str) -> None:
        privacy.budget_spent(int(experiment_id), detail)

    def round_started(self, claim: RoundClaim) -> None:
        event_record(
            kind=EventKind.ROUND_STARTED,
            experiment=Experiment.objects.filter(pk=self._pk(claim)).first(),
            round=claim.round_number,
            worker=claim.worker,
            updates=len(claim.updates),
            taken_over=claim.taken_over_from is not None,
        )

    def renew_lease(self, claim: RoundClaim, *, lease_seconds: float) -> RoundClaim:
        expires_at = self._clock() + lease_seconds
        renewed = RoundLease.objects.filter(pk=self._pk(claim), token=claim.token).update(
            expires_at=expires_at
        )
        if not renewed:
            raise self._lost(claim)
        return replace(claim, expires_at=expires_at)

    def thread_finished(self) -> None:
        connection.close()  # Django opens one connection per thread; a finished heartbeat's would linger

    def release_round(self, claim: RoundClaim, *, failure: str | None = None) -> None:
        with transaction.atomic():
            RoundLease.objects.filter(pk=self._pk(claim), token=claim.token).update(token="", worker="")
            if failure:
                event_record(
                    kind=EventKind.ROUND_FAILED,
                    experiment=Experiment.objects.filter(pk=self._pk(claim)).first(),
                    round=claim.round_number,
                    reason=failure,
                    duration_seconds=max(0.0, self._clock() - claim.claimed_at),
                )

    def quarantine_update(self, claim: RoundClaim, update_id: str, reason: str) -> None:
        with transaction.atomic():
            self._lock_current(claim)
            update = ModelUpdate.objects.select_related("experiment", "client").get(pk=int(update_id))
            changed = ModelUpdate.objects.filter(pk=update.pk, status=UpdateStatus.PENDING).update(
                status=UpdateStatus.QUARANTINED, status_reason=reason
            )
            if changed:
                event_record(
                    kind=EventKind.UPDATE_QUARANTINED,
                    experiment=update.experiment,
                    client=update.client,
                    update=update.pk,
                    reason=reason,
                )

    def commit_round(self, claim: RoundClaim, draft: AggregateDraft) -> AggregateRecord:
        claimed = {u.update_id for u in claim.updates}
        stray = [u for u in draft.update_ids if u not in claimed]
        if stray:
            raise LeaseLost(f"updates {stray} are not part of this claim")
        pk = self._pk(claim)
        try:
            with transaction.atomic():
                self._lock_current(claim)
                aggregate = ModelAggregate.objects.create(
                    experiment_id=pk,
                    parent_id=int(claim.parent_aggregate_id) if claim.parent_aggregate_id else None,
                    round_number=claim.round_number,
                    weights_key=draft.weights_key,
                    content_id=draft.content_id,
                    size_bytes=draft.size_bytes,
                    aggregator=draft.aggregator,
                    aggregator_params=dict(draft.aggregator_params),
                    duration_seconds=draft.duration_seconds,
                    peak_memory_bytes=draft.peak_memory_bytes,
                    state_key=draft.state_key,
                    state_content_id=draft.state_content_id,
                    report=dict(draft.report),
                )
                ids = [int(u) for u in draft.update_ids]
                marked = self._consume(pk, ids, aggregate, draft.input_weights)
                if marked != len(ids):
                    raise LeaseLost(f"{len(ids) - marked} of the round's updates are no longer pending")
                RoundLease.objects.filter(pk=pk, token=claim.token).update(token="", worker="")
                event_record(
                    kind=EventKind.ROUND_COMPLETED,
                    experiment=aggregate.experiment,
                    round=claim.round_number,
                    aggregate=aggregate.pk,
                    updates=len(draft.update_ids),
                    duration_seconds=draft.duration_seconds,
                    size_bytes=draft.size_bytes,
                    peak_memory_bytes=draft.peak_memory_bytes,
                )
                lifecycle.finish_if_reached(aggregate.experiment)  # the round limit, a training-metric target
        except IntegrityError:
            raise LeaseLost(f"round {claim.round_number} of experiment {pk} is already committed") from None
        return AggregateRecord(
            aggregate_id=str(aggregate.pk),
            experiment_id=str(pk),
            round_number=claim.round_number,
            parent_aggregate_id=claim.parent_aggregate_id,
            draft=draft,
            created_at=aggregate.created_on.timestamp(),
        )

    @staticmethod
    def _row(experiment_id: str) -> Experiment:
        try:
            return Experiment.objects.get(pk=int(experiment_id))
        except (Experiment.DoesNotExist, ValueError):
            raise LookupError(f"no experiment {experiment_id!r}") from None

    @staticmethod
    def _pk(claim: RoundClaim) -> int:
        return int(claim.experiment.experiment_id)

    def _lock_current(self, claim: RoundClaim) -> None:
        """Inside a transaction: hold the lease row, and fail unless the claim's token is current."""
        if not RoundLease.objects.select_for_update().filter(pk=self._pk(claim), token=claim.token).exists():
            raise self._lost(claim)

    @staticmethod
    def _lost(claim: RoundClaim) -> LeaseLost:
        return LeaseLost(
            f"round {claim.round_number} of experiment {claim.experiment.experiment_id} was taken over"
        )

    @staticmethod
    def _counted(
        experiment: Experiment, round_number: int | None
    ) -> tuple[frozenset[str], RoundSelection | None]:
        """The clients round ``round_number``'s policy counts (None: the current round's), and its draw
        when the experiment samples clients (drawn now if nothing asked before: this is its first need)."""
        selection = sampling.round_selection(experiment, round_number)
        return sampling.counted_clients(experiment, selection), selection

    @staticmethod
    def _pending(experiment_pk: int) -> list[UpdateRecord]:
        """The experiment's pending updates, oldest first, read as plain values: no model instance is
        built per update, and the database prints each client's id and each time (``fma_django.columns``)."""
        rows = list(
            ModelUpdate.objects.filter(experiment_id=experiment_pk, status=UpdateStatus.PENDING)
            .order_by("created_on", "id")
            .values_list(
                "pk",
                UUIDText("client__uuid"),
                "weights_key",
                "content_id",
                "num_examples",
                "base_round",
                EpochMicroseconds("created_on"),
                "base_aggregate__weights_key",
                "experiment__update_kind",
            )
        )
        if not rows:
            return []
        bases = selectors.update_base_keys(
            experiment_id=experiment_pk, bases=[(row[5], row[7]) for row in rows]
        )
        experiment_id = str(experiment_pk)
        delta = rows[0][8] == UpdateKind.DELTA
        return [
            UpdateRecord(
                base_weights_key=base,
                delta=delta,
                update_id=str(pk),
                experiment_id=experiment_id,
                client_id=client_id,
                weights_key=weights_key,
                content_id=content_id,
                num_examples=num_examples,
                base_round=base_round,
                received_at=received / 1_000_000,
            )
            for (pk, client_id, weights_key, content_id, num_examples, base_round, received, *_), base in zip(
                rows, bases, strict=True
            )
        ]

    @staticmethod
    def _consume(
        experiment_pk: int, ids: list[int], aggregate: ModelAggregate, shares: tuple[float, ...] | None
    ) -> int:
        """Mark the pending updates ``ids`` consumed by ``aggregate``, each with its share when given;
        how many were still pending. One UPDATE (on SQLite, one per 497 updates: 999 parameters)."""
        pending = ModelUpdate.objects.filter(experiment_id=experiment_pk, status=UpdateStatus.PENDING)
        if shares is None:
            return pending.filter(pk__in=ids).update(status=UpdateStatus.CONSUMED, aggregate=aggregate)
        rows = list(zip(ids, map(float, shares), strict=True))
        limit = connection.features.max_query_params  # None: no limit (PostgreSQL)
        batch = len(rows) if limit is None else (limit - 4) // 2  # 2 parameters a row, 4 a statement
        q = connection.ops.quote_name
        field = ModelUpdate._meta.get_field
        table, pk = q(ModelUpdate._meta.db_table), q(ModelUpdate._meta.pk.column)
        status, weight = q(field("status").column), q(field("aggregate_weight").column)
        aggregate_id, experiment_id = q(field("aggregate").column), q(field("experiment").column)
        marked = 0
        with connection.cursor() as cursor:
            for start in range(0, len(rows), batch):
                chunk = rows[start : start + batch]
                # a join to the (id, share) list: each row finds its share by key (a CASE with a branch per
                # update, tried in turn for each row, costs N² comparisons). VALUES' columns are named
                # column1, column2 on both databases.
                cursor.execute(
                    f"UPDATE {table} SET {status} = %s, {aggregate_id} = %s, {weight} = shares.column2 "
                    f"FROM (VALUES {', '.join(['(%s, %s)'] * len(chunk))}) AS shares "
                    f"WHERE {table}.{pk} = shares.column1 AND {table}.{experiment_id} = %s "
                    f"AND {table}.{status} = %s",
                    [
                        UpdateStatus.CONSUMED.value,
                        aggregate.pk,
                        *(value for row in chunk for value in row),
                        experiment_pk,
                        UpdateStatus.PENDING.value,
                    ],
                )
                marked += cursor.rowcount
        return marked
