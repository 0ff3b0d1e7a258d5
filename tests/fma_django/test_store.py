"""DjangoMetadataStore keeps fma-core's store contract, and RoundEngine runs rounds on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fma_core.connectors import AggregateDraft
from fma_core.errors import LeaseLost
from fma_core.rounds import RoundEngine
from fma_core.weights import load
from fma_django import lifecycle, selectors
from fma_django.models import (
    Client,
    Enrollment,
    Event,
    EventKind,
    Experiment,
    ModelAggregate,
    ModelUpdate,
    UpdateStatus,
)
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def submit(experiment, client_api, uploader, body: bytes, **headers: str) -> int:
    response = uploader(client_api, experiment.pk, body, **headers)
    assert response.status_code == 201, response.content
    return response.json()["id"]


def draft_for(claim, update_ids, input_weights=None) -> AggregateDraft:
    return AggregateDraft(
        weights_key="aggregates/x/y.safetensors",
        content_id="0" * 64,
        size_bytes=1,
        update_ids=tuple(update_ids),
        input_weights=input_weights,
        aggregator="fedavg",
        aggregator_params={},
        duration_seconds=0.0,
    )


def test_one_live_claim_per_experiment_and_takeover_after_expiry(
    experiment, client_api, uploader, safetensors
):
    submit(experiment, client_api, uploader, safetensors(1.0))
    clock = Clock()
    store = DjangoMetadataStore(clock=clock)
    first = store.claim_round(str(experiment.pk), worker="a", lease_seconds=60)
    assert first is not None
    assert first.round_number == 1
    assert [u.update_id for u in first.updates] == [str(ModelUpdate.objects.get().pk)]
    assert store.claim_round(str(experiment.pk), worker="b", lease_seconds=60) is None

    clock.now += 61
    second = store.claim_round(str(experiment.pk), worker="b", lease_seconds=60)
    assert second is not None
    assert second.token != first.token
    with pytest.raises(LeaseLost):
        store.renew_lease(first, lease_seconds=60)
    with pytest.raises(LeaseLost):
        store.commit_round(first, draft_for(first, [u.update_id for u in first.updates]))
    assert ModelUpdate.objects.get().status == UpdateStatus.PENDING


def test_nothing_pending_or_paused_gives_no_claim(experiment, client_api, uploader, safetensors):
    store = DjangoMetadataStore()
    assert store.claim_round(str(experiment.pk), worker="a", lease_seconds=60) is None
    submit(experiment, client_api, uploader, safetensors(1.0))
    lifecycle.experiment_set_state(experiment=experiment, state="paused", user=experiment.developer)
    assert store.claim_round(str(experiment.pk), worker="a", lease_seconds=60) is None
    with pytest.raises(LookupError):
        store.claim_round("999999", worker="a", lease_seconds=60)


def test_commit_marks_exactly_the_drafted_updates(experiment, enroll, uploader, safetensors):
    first, second = enroll(experiment), enroll(experiment)
    a = submit(experiment, first, uploader, safetensors(1.0))
    b = submit(experiment, second, uploader, safetensors(2.0))
    store = DjangoMetadataStore()
    claim = store.claim_round(str(experiment.pk), worker="w", lease_seconds=60)
    store.round_started(claim)
    store.quarantine_update(claim, str(b), "looks poisoned")
    record = store.commit_round(claim, draft_for(claim, [str(a)]))

    assert record.round_number == 1
    assert ModelUpdate.objects.get(pk=a).status == UpdateStatus.CONSUMED
    assert ModelUpdate.objects.get(pk=a).aggregate_id == int(record.aggregate_id)
    quarantined = ModelUpdate.objects.get(pk=b)
    assert (quarantined.status, quarantined.status_reason) == (UpdateStatus.QUARANTINED, "looks poisoned")
    with pytest.raises(LeaseLost):  # the claim ended with the commit
        store.commit_round(claim, draft_for(claim, [str(a)]))
    kinds = set(Event.objects.values_list("kind", flat=True))
    assert {EventKind.ROUND_STARTED, EventKind.ROUND_COMPLETED, EventKind.UPDATE_QUARANTINED} <= kinds


def test_release_with_failure_leaves_updates_pending_and_logs_it(
    experiment, client_api, uploader, safetensors
):
    submit(experiment, client_api, uploader, safetensors(1.0))
    store = DjangoMetadataStore()
    claim = store.claim_round(str(experiment.pk), worker="w", lease_seconds=60)
    store.release_round(claim, failure="disk full")
    assert ModelUpdate.objects.get().status == UpdateStatus.PENDING
    assert Event.objects.get(kind=EventKind.ROUND_FAILED).detail["reason"] == "disk full"
    assert store.claim_round(str(experiment.pk), worker="w", lease_seconds=60) is not None


def test_round_engine_aggregates_with_fedavg_weights(experiment, enroll, uploader, safetensors):
    submit(experiment, enroll(experiment), uploader, safetensors(1.0), X_FMA_NUM_EXAMPLES="1")
    submit(experiment, enroll(experiment), uploader, safetensors(4.0), X_FMA_NUM_EXAMPLES="2")
    engine = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1)

    outcome = engine.run_round(str(experiment.pk))

    assert outcome.status == "committed"
    aggregate = ModelAggregate.objects.get()
    assert (aggregate.round_number, aggregate.parent_id, aggregate.aggregator) == (1, None, "fedavg")
    with weight_store().open(aggregate.weights_key) as stream:
        result = load(stream)
    assert result["dense"] == pytest.approx(3.0)  # (1·1 + 4·2) / 3
    shares = sorted(aggregate.updates.values_list("aggregate_weight", flat=True))
    assert shares == pytest.approx([1 / 3, 2 / 3])
    assert engine.run_round(str(experiment.pk)).status == "idle"


def test_staleness_window_accepts_the_newest_aggregate(make_experiment, enroll, uploader, safetensors):
    """furthest_base_agg=1 keeps updates trained on the newest aggregate (the original dropped them)."""
    experiment = make_experiment(furthest_base_agg=1)
    client = enroll(experiment)
    engine = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1)
    submit(experiment, client, uploader, safetensors(1.0))
    assert engine.run_round(str(experiment.pk)).status == "committed"
    newest = ModelAggregate.objects.get()

    fresh = submit(experiment, client, uploader, safetensors(2.0), X_FMA_BASE_AGGREGATE=str(newest.pk))
    stale = submit(experiment, client, uploader, safetensors(3.0))  # trained on the initial model
    outcome = engine.run_round(str(experiment.pk))

    assert outcome.status == "committed"
    assert ModelUpdate.objects.get(pk=fresh).status == UpdateStatus.CONSUMED
    assert ModelUpdate.objects.get(pk=stale).status == UpdateStatus.QUARANTINED
    assert ModelAggregate.objects.get(round_number=2).parent_id == newest.pk


def test_round_policy_from_the_original_requirement(make_experiment, enroll, uploader, safetensors):
    experiment = make_experiment(requirement="require_x_updates", requirement_args=[2])
    engine = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1)
    submit(experiment, enroll(experiment), uploader, safetensors(1.0))
    assert engine.run_round(str(experiment.pk)).status == "not_ready"
    submit(experiment, enroll(experiment), uploader, safetensors(2.0))
    assert engine.run_round(str(experiment.pk)).status == "committed"


def stored_updates(experiment, count: int, **fields) -> list[int]:
    """``count`` pending updates straight into the table (the store reads rows, not bytes)."""
    client = Client.objects.create()
    ModelUpdate.objects.bulk_create(
        ModelUpdate(
            experiment=experiment,
            client=client,
            weights_key=f"updates/{n}.safetensors",
            content_id=f"{n:064x}",
            size_bytes=1,
            num_examples=n + 1,
            **fields,
        )
        for n in range(count)
    )
    return sorted(ModelUpdate.objects.filter(experiment=experiment).values_list("pk", flat=True))


def test_a_large_round_commits_every_share_or_nothing(experiment):
    """More updates than one UPDATE takes on SQLite (497 with their shares): every batch commits, or none."""
    ids = stored_updates(experiment, 1100)
    store = DjangoMetadataStore()
    claim = store.claim_round(str(experiment.pk), worker="w", lease_seconds=60)
    shares = tuple(1 / (n + 3) for n in range(len(ids)))  # distinct, and not round in binary
    drafted = [u.update_id for u in claim.updates]
    ModelUpdate.objects.filter(pk=ids[-1]).update(status=UpdateStatus.QUARANTINED)
    with pytest.raises(LeaseLost, match="1 of the round's updates are no longer pending"):
        store.commit_round(claim, draft_for(claim, drafted, shares))
    assert not ModelAggregate.objects.exists()
    assert ModelUpdate.objects.filter(status=UpdateStatus.PENDING).count() == len(ids) - 1

    ModelUpdate.objects.filter(pk=ids[-1]).update(status=UpdateStatus.PENDING)
    record = store.commit_round(claim, draft_for(claim, drafted, shares))
    rows = ModelUpdate.objects.filter(pk__in=ids).values_list(
        "pk", "status", "aggregate_id", "aggregate_weight"
    )
    assert {pk: (status, aggregate, share) for pk, status, aggregate, share in rows} == {
        int(pk): (UpdateStatus.CONSUMED, int(record.aggregate_id), share)
        for pk, share in zip(drafted, shares, strict=True)
    }


def enrolled_updates(experiment, count: int) -> list[Client]:
    """``count`` enrolled clients, each with one pending update, straight into the tables."""
    clients = Client.objects.bulk_create([Client() for _ in range(count)])
    Enrollment.objects.bulk_create(Enrollment(experiment=experiment, client=c) for c in clients)
    ModelUpdate.objects.bulk_create(
        ModelUpdate(
            experiment=experiment,
            client=c,
            weights_key=f"updates/{n}.safetensors",
            content_id=f"{n:064x}",
            size_bytes=1,
        )
        for n, c in enumerate(clients)
    )
    return clients


def statements(work: Callable[[], Any]) -> tuple[int, Any]:
    with CaptureQueriesContext(connection) as queries:
        result = work()
    return len(queries.captured_queries), result


def round_statements(experiment, size: int) -> tuple[int, int, int, int]:
    """The statements of a round of ``size`` updates from as many enrolled clients: the readiness check
    short of a count, the one that reads every pending update (all_clients with a client still to push),
    the claim and the commit."""
    late = enrolled_updates(experiment, size + 1)[-1]
    ModelUpdate.objects.filter(client=late).delete()
    engine = RoundEngine(DjangoMetadataStore(), weight_store())
    short_of_count, outcome = statements(lambda: engine.start_round(str(experiment.pk)))
    assert outcome.status == "not_ready"
    Experiment.objects.filter(pk=experiment.pk).update(round_policy={"policy": "all_clients"})
    short_of_a_client, outcome = statements(lambda: engine.start_round(str(experiment.pk)))
    assert outcome.status == "not_ready"
    Enrollment.objects.filter(client=late).delete()
    store = DjangoMetadataStore()
    claimed, claim = statements(lambda: store.claim_round(str(experiment.pk), worker="w", lease_seconds=60))
    assert len(claim.updates) == size
    draft = draft_for(claim, [u.update_id for u in claim.updates], (1 / size,) * size)
    committed, _ = statements(lambda: store.commit_round(claim, draft))
    assert ModelUpdate.objects.filter(experiment=experiment, status=UpdateStatus.CONSUMED).count() == size
    return short_of_count, short_of_a_client, claimed, committed


def test_a_claim_its_commit_and_the_readiness_checks_run_as_many_statements_for_20_updates_as_for_600(
    make_experiment,
):
    """No statement per update (the commit's UPDATE takes up to 497 updates on SQLite: 600 take two)."""
    small, large = (
        round_statements(make_experiment(round_policy={"policy": "require_x_updates", "x": n + 1}), n)
        for n in (20, 600)
    )
    assert large[:3] == small[:3]
    assert large[3] == small[3] + (1 if connection.vendor == "sqlite" else 0)


def test_pending_updates_and_enrolled_clients_read_each_id_and_time_as_python_prints_them(experiment):
    """The database prints the client ids and the times (``fma_django.columns``): the same strings as
    ``str(uuid)`` and the same floats as ``datetime.timestamp()``, to the microsecond."""
    clients = enrolled_updates(experiment, 4)
    times = [
        datetime(2026, 12, 6, 8, 0, 0, tzinfo=UTC),  # SQLite stores no fraction at all
        datetime(2026, 12, 6, 8, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 12, 6, 23, 59, 59, 999_999, tzinfo=UTC),  # SQLite's date functions round this up
        datetime(2031, 2, 28, 13, 7, 9, 123_456, tzinfo=UTC),
    ]
    for client, time in zip(clients, times, strict=True):
        ModelUpdate.objects.filter(client=client).update(created_on=time)
    store = DjangoMetadataStore()

    pending = store.pending_updates(str(experiment.pk))

    assert [(u.client_id, u.received_at) for u in pending] == [
        (str(c.uuid), t.timestamp()) for c, t in zip(clients, times, strict=True)
    ]
    assert store.enrolled_clients(str(experiment.pk)) == {str(c.uuid) for c in clients}
    assert store.pending_count(str(experiment.pk)) == 4


def aggregate_row(experiment, round_number: int, **fields) -> ModelAggregate:
    """An aggregate straight into the table (the store reads its keys, not its bytes)."""
    return ModelAggregate.objects.create(
        experiment=experiment,
        round_number=round_number,
        weights_key=f"aggregates/{experiment.pk}/{round_number}.safetensors",
        content_id=f"{round_number:064x}",
        size_bytes=1,
        aggregator="fedavg",
        duration_seconds=0.0,
        **fields,
    )


@pytest.mark.parametrize("update_kind", ["weights", "delta"])
def test_pending_updates_name_the_weights_they_were_trained_from(make_experiment, update_kind):
    experiment = make_experiment(update_kind=update_kind)
    initial = selectors.initial_artifact(experiment.pk)
    on_initial = stored_updates(experiment, 2)
    newest = aggregate_row(experiment, 1)
    on_newest = stored_updates(experiment, 1, base_aggregate=newest, base_round=1)[-1]
    # an update whose base aggregate is gone (the row was deleted): its base is unknown, not the initial model
    lost_base = stored_updates(experiment, 1, base_round=1)[-1]
    store = DjangoMetadataStore()

    pending = store.pending_updates(str(experiment.pk))
    assert {int(u.update_id): u.base_weights_key for u in pending} == {
        **{pk: initial.weights_key for pk in on_initial},
        on_newest: newest.weights_key,
        lost_base: None,
    }
    assert {u.delta for u in pending} == {update_kind == "delta"}
    claim = store.claim_round(str(experiment.pk), worker="w", lease_seconds=60)
    assert (claim.updates, claim.parent_aggregate_id, claim.round_number) == (
        tuple(pending),
        str(newest.pk),
        2,
    )


def test_a_claim_names_the_parent_model_and_its_server_state_and_a_commit_keeps_the_state(experiment):
    store = DjangoMetadataStore()
    stored_updates(experiment, 1)
    first = store.claim_round(str(experiment.pk), worker="w", lease_seconds=60)
    # before round 1: the initial model, and no state
    assert (first.parent_aggregate_id, first.parent_weights_key, first.parent_state_key) == (
        None,
        selectors.initial_artifact(experiment.pk).weights_key,
        None,
    )
    draft = replace(
        draft_for(first, [u.update_id for u in first.updates]),
        weights_key=f"aggregates/{experiment.pk}/r1.safetensors",
        state_key=f"aggregates/{experiment.pk}/r1-state.safetensors",
        state_content_id="5" * 64,
    )
    record = store.commit_round(first, draft)
    aggregate = ModelAggregate.objects.get(pk=int(record.aggregate_id))
    assert (aggregate.state_key, aggregate.state_content_id) == (draft.state_key, draft.state_content_id)

    stored_updates(experiment, 1)
    second = store.claim_round(str(experiment.pk), worker="w", lease_seconds=60)
    assert (second.parent_aggregate_id, second.parent_weights_key, second.parent_state_key) == (
        record.aggregate_id,
        draft.weights_key,
        draft.state_key,
    )
    stateless = store.commit_round(second, draft_for(second, [u.update_id for u in second.updates]))
    assert ModelAggregate.objects.filter(pk=int(stateless.aggregate_id), state_key=None).exists()

    stored_updates(experiment, 1)
    third = store.claim_round(str(experiment.pk), worker="w", lease_seconds=60)
    assert (third.parent_aggregate_id, third.parent_state_key) == (stateless.aggregate_id, None)


def test_without_an_initial_model_round_0_has_no_weights_to_name(make_experiment):
    experiment = make_experiment(initial_model=None)
    stored_updates(experiment, 2)
    store = DjangoMetadataStore()
    pending = store.pending_updates(str(experiment.pk))
    assert [(u.base_weights_key, u.delta) for u in pending] == [(None, False), (None, False)]
    claim = store.claim_round(str(experiment.pk), worker="w", lease_seconds=60)
    assert (claim.parent_aggregate_id, claim.parent_weights_key, claim.parent_state_key) == (None, None, None)


class OvertakenStore(DjangoMetadataStore):
    """A worker's store that, between the worker's look at the pending updates and its claim, lets another
    worker run the round (``overtake``): what happens when two notifications of one experiment race."""

    def __init__(self, overtake) -> None:
        super().__init__()
        self._overtake = overtake

    def claim_round(self, experiment_id: str, *, worker: str, lease_seconds: float):
        self._overtake()
        return super().claim_round(experiment_id, worker=worker, lease_seconds=lease_seconds)


def test_a_claim_released_as_not_ready_logs_no_round_started(make_experiment, enroll, uploader, safetensors):
    experiment = make_experiment(round_policy={"policy": "require_x_updates", "x": 2})
    for value in (1.0, 2.0):
        submit(experiment, enroll(experiment), uploader, safetensors(value))

    def another_worker_commits_the_round_and_one_more_update_arrives() -> None:
        assert RoundEngine(DjangoMetadataStore(), weight_store()).run_round(str(experiment.pk)).status == (
            "committed"
        )
        submit(experiment, enroll(experiment), uploader, safetensors(3.0))

    late = RoundEngine(
        OvertakenStore(another_worker_commits_the_round_and_one_more_update_arrives), weight_store()
    )
    outcome = late.run_round(str(experiment.pk))

    assert outcome.status == "not_ready"  # it claimed one pending update where the policy wants two
    kinds = list(Event.objects.filter(experiment=experiment).values_list("kind", flat=True))
    assert kinds.count(EventKind.ROUND_STARTED) == kinds.count(EventKind.ROUND_COMPLETED) == 1
