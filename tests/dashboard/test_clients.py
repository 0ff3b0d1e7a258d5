"""The clients pages through Django's test client: each client of an experiment, one client's updates with
what their rounds measured (norm, cosine, distance, outlier), the links to them, and who may see them."""

from __future__ import annotations

import html
import uuid

import pytest
from django.test import Client as Browser

from fma_django.errors import DomainError
from fma_django.models import ModelUpdate, RoundSelection

NOISY = 40.0


@pytest.fixture
def alice_browser(alice) -> Browser:
    browser = Browser()
    browser.force_login(alice)
    return browser


def _round_with_two_noisy_clients(experiment, enroll, submit, run_round):
    """Ten clients, two of them pushing values far from the others; the round, and the clients."""
    clients = [enroll(experiment) for _ in range(10)]
    values = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.03, NOISY, -NOISY]
    updates = [
        submit(experiment, c, v, metrics={"loss": 0.5 + i / 100}, num_examples=10 + i)
        for i, (c, v) in enumerate(zip(clients, values, strict=True))
    ]
    return run_round(experiment), clients, updates


def test_the_clients_page_lists_each_client_with_its_rounds_examples_refusals_and_outliers(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(
        alice, "clients", aggregator="median", round_policy={"policy": "require_x_updates", "x": 10}
    )
    aggregate, clients, updates = _round_with_two_noisy_clients(experiment, enroll, submit, run_round)
    flagged = {u for u, f in aggregate.report["updates"]["per_update"].items() if f["outlier"]}
    assert flagged == {str(updates[8].pk), str(updates[9].pk)}
    with pytest.raises(DomainError):  # a refused push: a metric that is not a finite number
        submit(experiment, clients[0], 1.0, metrics={"loss": float("nan")})
    page = html.unescape(
        alice_browser.get(f"/dashboard/experiments/{experiment.pk}/clients/").content.decode()
    )
    for i, client in enumerate(clients):
        row = page[page.index(f'data-client="{client.uuid}"') :].split("</tr>")[0]
        assert f'href="/dashboard/experiments/{experiment.pk}/clients/{client.uuid}/"' in row
        cells = [c.split("<")[0] for c in row.split('<td class="num">')[1:]]
        rounds, examples, sent, rejected, quarantined = cells[:5]
        assert (rounds, examples, sent, quarantined) == ("1", str(10 + i), "1", "0")
        assert rejected == ("1" if i == 0 else "0")
        assert ('class="outlier">1<' in row) == (i >= 8)
    assert page.count('class="flagged"') == 2


def test_a_client_page_shows_its_updates_round_by_round_with_the_rounds_figures(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "one-client", round_policy={"policy": "require_x_updates", "x": 10})
    aggregate, clients, updates = _round_with_two_noisy_clients(experiment, enroll, submit, run_round)
    noisy = updates[8]
    noisy.refresh_from_db()
    figures = aggregate.report["updates"]["per_update"][str(noisy.pk)]
    page = html.unescape(
        alice_browser.get(
            f"/dashboard/experiments/{experiment.pk}/clients/{clients[8].uuid}/"
        ).content.decode()
    )
    row = page[page.index(f'data-update="{noisy.pk}"') :].split("</tr>")[0]
    assert 'class="flagged"' in row
    assert "outlier" in row
    assert f"{figures['norm']:.6f}".rstrip("0")[:8] in row.replace(",", "")
    assert f"{figures['distance']:.6f}".rstrip("0")[:8] in row.replace(",", "")
    assert f"{figures['cosine']:.3f}" in row
    assert f"{noisy.aggregate_weight:.4f}" in row
    assert "loss 0.58<" in row
    assert "consumed" in row
    # the chart's table (no JavaScript): this client's distance and the round's threshold
    assert 'data-chart="client-distance"' in page
    threshold = aggregate.report["updates"]["outlier_rule"]["threshold"]
    assert repr(figures["distance"]) in page
    assert repr(threshold) in page
    honest = html.unescape(
        alice_browser.get(
            f"/dashboard/experiments/{experiment.pk}/clients/{clients[0].uuid}/"
        ).content.decode()
    )
    assert 'class="flagged"' not in honest


def test_the_experiment_page_and_the_lineage_link_to_the_clients(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "linked", round_policy={"policy": "require_x_updates", "x": 10})
    aggregate, clients, updates = _round_with_two_noisy_clients(experiment, enroll, submit, run_round)
    page = html.unescape(alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode())
    assert f'href="/dashboard/experiments/{experiment.pk}/clients/"' in page
    assert '10 updates, <strong class="outlier">2 outliers</strong>' in page
    line = page[page.index(f"update {updates[9].pk} from") :].split("</li>")[0]
    assert f'href="/dashboard/experiments/{experiment.pk}/clients/{clients[9].uuid}/"' in line
    distance = aggregate.report["updates"]["per_update"][str(updates[9].pk)]["distance"]
    assert "distance" in line
    assert "outlier" in line
    honest = page[page.index(f"update {updates[0].pk} from") :].split("</li>")[0]
    assert "outlier" not in honest
    assert distance > 0


def test_a_sampled_round_says_which_updates_came_from_selected_clients(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    from fma_django import sampling

    experiment = make_experiment(alice, "sampled", client_sampling={"clients": 2, "seed": 7})
    clients = {str(c.uuid): c for c in (enroll(experiment) for _ in range(3))}
    selection = sampling.round_selection(experiment, 1)
    for uuid_ in selection.clients:
        submit(experiment, clients[uuid_], 1.0)
    run_round(experiment)
    chosen = selection.clients[0]
    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/clients/{chosen}/").content.decode()
    assert "selected</td>" in page
    assert "1 of 1 round" in page
    left_out = next(u for u in clients if u not in selection.clients)
    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/clients/{left_out}/").content.decode()
    assert "0 of 1 round" in page
    assert RoundSelection.objects.filter(experiment=experiment).count() == 1


def test_bad_ids_and_other_developers_clients_are_404(
    alice, bob, make_experiment, enroll, submit, alice_browser
):
    mine = make_experiment(alice, "mine")
    theirs = make_experiment(bob, "theirs")
    my_client = enroll(mine)
    their_client = enroll(theirs)
    submit(theirs, their_client, 1.0)
    base = "/dashboard/experiments"
    assert alice_browser.get(f"{base}/{mine.pk}/clients/").status_code == 200
    assert alice_browser.get(f"{base}/{mine.pk}/clients/{my_client.uuid}/").status_code == 200
    for url in (
        f"{base}/{theirs.pk}/clients/",
        f"{base}/{theirs.pk}/clients/{their_client.uuid}/",
        f"{base}/{mine.pk}/clients/{their_client.uuid}/",  # not enrolled here
        f"{base}/{mine.pk}/clients/{uuid.uuid4()}/",
        f"{base}/99999/clients/",
        f"{base}/{mine.pk}/clients/not-a-uuid/",
    ):
        assert alice_browser.get(url).status_code == 404, url
    assert ModelUpdate.objects.filter(experiment=theirs).count() == 1
    anonymous = Browser().get(f"{base}/{mine.pk}/clients/")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/dashboard/login/")
