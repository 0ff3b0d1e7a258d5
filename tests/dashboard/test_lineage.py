"""The lineage of large rounds: as many statements whatever a round's size, and at most
``INPUTS_SHOWN`` of a round's updates in the page, the rest one link away."""

from __future__ import annotations

import hashlib

import pytest
from django.db import connection
from django.db.models import Max
from django.test import Client as Browser
from django.test.utils import CaptureQueriesContext

from fma_django.models import Client, Experiment, ModelAggregate, ModelUpdate, UpdateStatus
from fma_service.dashboard import selectors as dashboard
from fma_service.dashboard.selectors import INPUTS_SHOWN


@pytest.fixture
def alice_browser(alice) -> Browser:
    browser = Browser()
    browser.force_login(alice)
    return browser


def committed_round(experiment: Experiment, size: int) -> tuple[ModelAggregate, list[ModelUpdate]]:
    """A committed round of ``size`` updates from as many clients, straight into the tables; its
    updates in the round's canonical order (content hash)."""
    last = experiment.aggregates.aggregate(last=Max("round_number"))["last"] or 0
    aggregate = ModelAggregate.objects.create(
        experiment=experiment,
        round_number=last + 1,
        weights_key=f"aggregates/{experiment.pk}/{last + 1}.safetensors",
        content_id="a" * 64,
        size_bytes=1,
        aggregator="fedavg",
        duration_seconds=0.0,
    )
    clients = Client.objects.bulk_create([Client() for _ in range(size)])
    ModelUpdate.objects.bulk_create(
        ModelUpdate(
            experiment=experiment,
            client=client,
            weights_key=f"updates/{aggregate.round_number}/{n}.safetensors",
            content_id=hashlib.sha256(f"{aggregate.round_number}/{n}".encode()).hexdigest(),
            size_bytes=1,
            num_examples=n + 1,
            status=UpdateStatus.CONSUMED,
            aggregate=aggregate,
            aggregate_weight=1 / size,
        )
        for n, client in enumerate(clients)
    )
    return aggregate, list(aggregate.updates.select_related("client").order_by("content_id", "id"))


def lineage_statements(experiment: Experiment) -> tuple[int, list[dashboard.RoundRow]]:
    with CaptureQueriesContext(connection) as queries:
        rows = dashboard.round_rows(experiment)
    return len(queries.captured_queries), rows


def test_the_lineage_reads_as_many_statements_for_a_round_of_20_updates_as_for_600(alice, make_experiment):
    small, large = make_experiment(alice, "small"), make_experiment(alice, "large")
    committed_round(small, 20)
    for _ in range(2):
        committed_round(large, 600)

    small_statements, small_rows = lineage_statements(small)
    large_statements, large_rows = lineage_statements(large)

    assert small_statements == large_statements
    assert [len(r.inputs) for r in small_rows] == [20]
    assert [(r.updates, len(r.inputs)) for r in large_rows] == [(600, INPUTS_SHOWN)] * 2


def test_a_rounds_lineage_lists_its_first_updates_in_canonical_order_as_the_rows_hold_them(
    alice, make_experiment
):
    experiment = make_experiment(alice, "listed")
    _, updates = committed_round(experiment, INPUTS_SHOWN + 5)

    (row,) = dashboard.round_rows(experiment)

    assert row.inputs_not_shown == 5
    assert [(i.update_id, i.client, i.num_examples, i.weight, i.content_id) for i in row.inputs] == [
        (u.pk, str(u.client.uuid), u.num_examples, u.aggregate_weight, u.content_id)
        for u in updates[:INPUTS_SHOWN]
    ]


def test_the_lineage_page_shows_a_large_rounds_first_updates_and_links_to_all_of_them(
    alice, make_experiment, alice_browser
):
    experiment = make_experiment(alice, "large")
    whole, _ = committed_round(experiment, INPUTS_SHOWN)
    large, updates = committed_round(experiment, INPUTS_SHOWN + 7)

    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode()

    rows = page.split('<tr data-aggregate="')
    whole_row = next(r for r in rows if r.startswith(f'{whole.pk}"'))
    large_row = next(r for r in rows if r.startswith(f'{large.pk}"'))
    assert whole_row.count("<li>update ") == INPUTS_SHOWN
    assert 'class="more"' not in whole_row
    assert large_row.count("<li>update ") == INPUTS_SHOWN
    assert f"<summary>{INPUTS_SHOWN + 7} updates</summary>" in large_row
    listed = [large_row.index(f"<li>update {u.pk} from") for u in updates[:INPUTS_SHOWN]]
    assert listed == sorted(listed)
    assert f"<li>update {updates[INPUTS_SHOWN].pk} from" not in large_row
    record = f"/api/v1/model_aggregates/{large.pk}/?format=json"
    assert f'and 7 more: <a href="{record}">every update of round {large.round_number}</a>' in large_row

    listed_in_record = alice_browser.get(record).json()["updates"]
    assert sorted((u["id"], u["client"]) for u in listed_in_record) == sorted(
        (u.pk, str(u.client.uuid)) for u in updates
    )
