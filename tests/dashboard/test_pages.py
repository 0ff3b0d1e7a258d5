"""The dashboard's pages through Django's test client: login, tenancy, what they show, and the forms."""

from __future__ import annotations

import hashlib
import html

import pytest
from django.test import Client as Browser
from pytest_django.asserts import assertInHTML

from fma_django import evaluations, lifecycle
from fma_django.models import (
    Evaluation,
    Event,
    EventKind,
    ModelAggregate,
    ModelArtifact,
    RoundLease,
)


@pytest.fixture
def alice_browser(alice) -> Browser:
    browser = Browser(enforce_csrf_checks=True)
    browser.force_login(alice)
    return browser


def _csrf(browser: Browser, url: str) -> str:
    browser.get(url)
    return browser.cookies["csrftoken"].value


def test_anonymous_visitors_are_sent_to_the_login_page(alice, make_experiment):
    experiment = make_experiment(alice, "mnist")
    for url in ("/", "/dashboard/", f"/dashboard/experiments/{experiment.pk}/"):
        answer = Browser().get(url, follow=True)
        assert answer.redirect_chain[-1][0].startswith("/dashboard/login/")
    answer = Browser().get(f"/dashboard/experiments/{experiment.pk}/live.json")
    assert answer.status_code == 302
    assert answer["Location"].startswith("/dashboard/login/?next=")


def test_logging_in_with_the_form_leads_to_the_experiments(alice):
    browser = Browser(enforce_csrf_checks=True)
    token = _csrf(browser, "/dashboard/login/")
    answer = browser.post(
        "/dashboard/login/",
        {"username": "alice", "password": "alice-password", "csrfmiddlewaretoken": token},
        follow=True,
    )
    assert answer.redirect_chain[-1][0] == "/dashboard/"
    assert b"You have no experiments yet" in answer.content
    wrong = Browser().post("/dashboard/login/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 200
    assert b'role="alert"' in wrong.content


def test_a_developer_sees_only_her_experiments_and_staff_sees_all(
    alice, bob, make_experiment, alice_browser, django_user_model
):
    mine = make_experiment(alice, "alice-mnist")
    theirs = make_experiment(bob, "bob-secret")
    page = alice_browser.get("/dashboard/").content.decode()
    assert "alice-mnist" in page
    assert "bob-secret" not in page
    assert alice_browser.get(f"/dashboard/experiments/{mine.pk}/").status_code == 200
    assert alice_browser.get(f"/dashboard/experiments/{theirs.pk}/").status_code == 404
    assert alice_browser.get(f"/dashboard/experiments/{theirs.pk}/live.json").status_code == 404
    staff = Browser()
    staff.force_login(django_user_model.objects.create_user("ops", password="x", is_staff=True))
    page = staff.get("/dashboard/").content.decode()
    assert "alice-mnist" in page
    assert "bob-secret" in page


def test_the_list_shows_state_round_clients_and_waiting_updates(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "mnist")
    first, second = enroll(experiment), enroll(experiment)
    submit(experiment, first, 1.0)
    run_round(experiment)
    submit(experiment, second, 2.0)
    answer = alice_browser.get("/dashboard/")
    (summary,) = answer.context["summaries"]
    assert (summary.state, summary.current_round, summary.clients_enrolled, summary.updates_waiting) == (
        "collecting",
        1,
        2,
        1,
    )
    assert summary.last_aggregate_on is not None
    assert b'<span class="state state-collecting">collecting</span>' in answer.content


def test_the_state_is_paused_aggregating_or_failed_as_the_rounds_go(alice, make_experiment, alice_browser):
    experiment = make_experiment(alice, "mnist")
    url = f"/dashboard/experiments/{experiment.pk}/live.json"
    RoundLease.objects.create(experiment=experiment, token="t", worker="w", round_number=1, expires_at=4e9)
    assert alice_browser.get(url).json()["state"] == "aggregating"
    RoundLease.objects.filter(experiment=experiment).update(token="")
    Event.objects.create(
        kind=EventKind.ROUND_FAILED, experiment=experiment, detail={"round": 1, "reason": "disk full"}
    )
    answer = alice_browser.get(url).json()
    assert answer["state"] == "failed"
    assert "disk full" in answer["regions"]["summary"]["html"]
    assert "disk full" in answer["regions"]["problems"]["html"]
    lifecycle.experiment_set_state(experiment=experiment, state="paused", user=alice, reason="new data")
    answer = alice_browser.get(url).json()
    assert answer["state"] == "paused"
    assert "new data" in answer["regions"]["summary"]["html"]


def test_the_detail_page_shows_plots_rounds_rejections_and_lineage(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "mnist", metrics_schema={"type": "object"})
    first, second = enroll(experiment), enroll(experiment)
    u1 = submit(experiment, first, 1.0, num_examples=1, metrics={"accuracy": 0.5})
    u2 = submit(experiment, second, 3.0, num_examples=3, metrics={"accuracy": 0.9})
    aggregate = run_round(experiment)
    with pytest.raises(Exception, match="schema"):
        submit(experiment, first, 2.0, metrics=[1, 2])
    answer = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/")
    page = answer.content.decode()
    assert [c.key for c in answer.context["charts"]] == ["training-accuracy", "participation", "duration"]
    (accuracy,) = answer.context["charts"][0].series
    assert accuracy.points == ((1, pytest.approx(0.8)),)
    assertInHTML(
        f"""<tr data-key="1"><th scope="row" class="num">1</th>
        <td class="num" data-value="{accuracy.points[0][1]!r}">0.800000</td></tr>""",
        page,
        count=1,
    )
    (row,) = answer.context["rounds"]
    assert (row.updates, row.clients, row.examples, row.bytes_in) == (2, 2, 4, u1.size_bytes + u2.size_bytes)
    assert aggregate.content_id in page
    assert u1.content_id in page
    assert u2.content_id in page
    assert "metrics does not match the experiment&#x27;s schema" in page
    assert f"/api/v1/model_aggregates/{aggregate.pk}/weights/?format=safetensors" in page
    for region in ("summary", "plots", "rounds", "problems", "lineage"):
        assert f'data-live="{region}" data-cursor="' in page


def test_the_download_link_serves_the_aggregates_bytes_to_the_logged_in_developer(
    alice, bob, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "mnist")
    submit(experiment, enroll(experiment), 1.0)
    aggregate = run_round(experiment)
    url = f"/api/v1/model_aggregates/{aggregate.pk}/weights/?format=safetensors"
    answer = alice_browser.get(url)
    assert answer.status_code == 200
    assert len(b"".join(answer.streaming_content)) == aggregate.size_bytes
    other = Browser()
    other.force_login(bob)
    assert other.get(url).status_code == 404


def test_publishing_goes_through_the_service_with_csrf(
    alice, bob, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "mnist")
    submit(experiment, enroll(experiment), 1.0)
    aggregate = run_round(experiment)
    url = f"/dashboard/experiments/{experiment.pk}/publish/"
    no_token = alice_browser.post(url, {"aggregate": aggregate.pk, "version": "2.0"})
    assert no_token.status_code == 403
    token = _csrf(alice_browser, f"/dashboard/experiments/{experiment.pk}/")
    answer = alice_browser.post(
        url, {"aggregate": aggregate.pk, "version": "2.0", "csrfmiddlewaretoken": token}, follow=True
    )
    assert "Round 1 is published as version 2.0." in answer.content.decode()
    artifact = ModelArtifact.objects.get(experiment=experiment, version="2.0")
    assert artifact.aggregate == aggregate
    experiment.refresh_from_db()
    assert experiment.current_artifact == artifact
    again = alice_browser.post(
        url, {"aggregate": aggregate.pk, "version": "2.0", "csrfmiddlewaretoken": token}, follow=True
    )
    assert "already published" in again.content.decode()
    other = Browser()
    other.force_login(bob)
    assert other.post(url, {"aggregate": aggregate.pk, "version": "3.0"}).status_code == 404
    assert not ModelArtifact.objects.filter(version="3.0").exists()


def test_pause_and_resume_record_who_did_it(alice, make_experiment, alice_browser):
    experiment = make_experiment(alice, "mnist")
    url = f"/dashboard/experiments/{experiment.pk}/state/"
    token = _csrf(alice_browser, f"/dashboard/experiments/{experiment.pk}/")
    answer = alice_browser.post(url, {"state": "paused", "csrfmiddlewaretoken": token}, follow=True)
    assert "Rounds are paused." in answer.content.decode()
    assert b"Resume rounds" in answer.content
    experiment.refresh_from_db()
    assert (experiment.state, experiment.allow_aggregation) == ("paused", False)
    alice_browser.post(url, {"state": "collecting", "csrfmiddlewaretoken": token})
    experiment.refresh_from_db()
    assert (experiment.state, experiment.allow_aggregation) == ("collecting", True)
    kinds = list(
        Event.objects.filter(experiment=experiment, user=alice)
        .exclude(kind=EventKind.EXPERIMENT_CREATED)
        .order_by("id")
        .values_list("kind", flat=True)
    )
    assert kinds == [EventKind.AGGREGATION_PAUSED, EventKind.AGGREGATION_RESUMED]


def _poll(browser: Browser, url: str, cursors: dict[str, str]) -> dict:
    """One poll as the page makes it, the cursors moved on as the page moves them."""
    answer = browser.get(url, cursors).json()
    for name, region in answer["regions"].items():
        cursors[name] = region["cursor"]
    return answer["regions"]


def test_a_poll_sends_only_the_regions_that_changed_and_only_their_new_rows(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "mnist")
    url = f"/dashboard/experiments/{experiment.pk}/live.json"
    first, second = enroll(experiment), enroll(experiment)
    submit(experiment, first, 1.0, metrics={"loss": 0.5})
    run_round(experiment)
    cursors: dict[str, str] = {}
    regions = _poll(alice_browser, url, cursors)
    assert set(regions) == {"summary", "plots", "rounds", "problems", "lineage"}
    assert not any(region["rows"] for region in regions.values())  # no cursor: whole regions
    assert _poll(alice_browser, url, cursors) == {}

    submit(experiment, second, 2.0, metrics={"loss": 0.25})
    regions = _poll(alice_browser, url, cursors)
    assert set(regions) == {"summary"}  # one update waiting: nothing else moved
    assert "<dd>1</dd>" in regions["summary"]["html"]

    aggregate = run_round(experiment)
    regions = _poll(alice_browser, url, cursors)
    assert set(regions) == {"summary", "plots", "rounds", "lineage"}
    for name in ("plots", "rounds", "lineage"):
        assert regions[name]["rows"], name
    assert 'data-key="2"' in regions["rounds"]["html"]
    assert 'data-key="1"' not in regions["rounds"]["html"]
    assert f'data-aggregate="{aggregate.pk}"' in regions["lineage"]["html"]
    assert regions["lineage"]["html"].count("data-aggregate=") == 1
    assert regions["plots"]["html"].count('<tr data-key="2">') == 3  # loss, clients, duration
    assert '<tr data-key="1">' not in regions["plots"]["html"]

    # a late score of round 1 changes round 1's point of a new chart, and nothing else
    Evaluation.objects.create(aggregate=aggregate.parent, client=first, metrics={"accuracy": 0.7})
    regions = _poll(alice_browser, url, cursors)
    assert set(regions) == {"plots"}
    assert 'data-chart="evaluation-accuracy"' in regions["plots"]["html"]
    assert '<tr data-key="2">' not in regions["plots"]["html"]

    Event.objects.create(
        kind=EventKind.UPDATE_REJECTED, experiment=experiment, detail={"reason": "not finite"}
    )
    regions = _poll(alice_browser, url, cursors)
    assert set(regions) == {"problems"}
    assert regions["problems"]["html"].count("<tr data-key=") == 1

    # a malformed or missing cursor gets the whole region, as a first load does
    whole = alice_browser.get(url, {**cursors, "rounds": "x.1", "lineage": ""}).json()["regions"]
    assert set(whole) == {"rounds", "lineage"}
    assert not whole["rounds"]["rows"]
    assert whole["rounds"]["html"].count("<tr data-key=") == 2


def test_the_lineage_shows_each_aggregates_algorithm_parameters_and_server_state(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "mnist")
    client = enroll(experiment)
    submit(experiment, client, 1.0)
    stateless = run_round(experiment)
    submit(experiment, client, 2.0)
    stateful = run_round(experiment)
    state = hashlib.sha256(b"the optimizer's moments").hexdigest()
    ModelAggregate.objects.filter(pk=stateful.pk).update(
        aggregator="fedadam",
        aggregator_params={"server_lr": 0.1, "beta1": 0.9},
        state_key=f"aggregates/{experiment.pk}/r2-state.safetensors",
        state_content_id=state,
    )
    ModelAggregate.objects.filter(pk=stateless.pk).update(aggregator_params={})

    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode()
    assertInHTML(
        f"""<td>fedadam <code class="params">{{"beta1": 0.9, "server_lr": 0.1}}</code>
        <details class="state-hash">
          <summary>server state <code class="hash" title="SHA-256 {state}">{state[:12]}…</code></summary>
          <code class="hash">{state}</code>
        </details></td>""",
        page,
        count=1,
    )
    assertInHTML("<td>fedavg</td>", page, count=1)  # no parameters, no state: nothing more to show


def test_a_server_optimizers_rounds_show_their_algorithm_parameters_and_state_in_the_lineage(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(
        alice, "adaptive", aggregator="fedadam", aggregator_params={"server_learning_rate": 0.5}
    )
    client = enroll(experiment)
    hashes = []
    for value in (1.0, 2.0):
        submit(experiment, client, value, base_aggregate_id=hashes[-1][0] if hashes else None)
        aggregate = run_round(experiment)
        hashes.append((aggregate.pk, aggregate.state_content_id))
    assert all(len(state) == 64 for _, state in hashes)
    assert hashes[0][1] != hashes[1][1]
    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode()
    for _, state in hashes:
        assert f'title="SHA-256 {state}"' in page
    assert page.count("fedadam") >= 2
    assert '"server_learning_rate": 0.5' in html.unescape(page)


def test_the_lineage_shows_each_rounds_norm_bound_and_each_updates_norm_and_clip_factor(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "clipped", update_norm={"mode": "clip", "bound": 7.5})
    small, large = enroll(experiment), enroll(experiment)
    kept = submit(experiment, small, 1.0)  # 15 values: a change of norm √15 ≈ 3.873
    clipped = submit(experiment, large, 5.0)  # 5·√15 ≈ 19.36, scaled by 7.5 / 19.36
    run_round(experiment)
    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode()
    assertInHTML("<summary>norm bound 7.5000 (clip, fixed)</summary>", page, count=1)
    assertInHTML(f"<li>update {kept.pk}: norm 3.8730</li>", page, count=1)
    assertInHTML(f"<li>update {clipped.pk}: norm 19.3649, clipped ×0.3873</li>", page, count=1)


def test_the_lineage_shows_the_clients_a_sampled_round_selected_and_its_seed(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    from fma_django import sampling

    experiment = make_experiment(alice, "sampled", client_sampling={"clients": 2, "seed": 99})
    clients = {str(c.uuid): c for c in (enroll(experiment) for _ in range(3))}
    selection = sampling.round_selection(experiment, 1)
    for uuid in selection.clients:
        submit(experiment, clients[uuid], 1.0)
    run_round(experiment)

    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode()
    first, second = selection.clients
    assertInHTML(
        f"""<details class="sampling">
          <summary>2 of 3 clients selected, seed <code>99</code></summary>
          <ul class="inputs">
            <li><a href="/dashboard/experiments/{experiment.pk}/clients/{first}/"><code>{first}</code></a></li>
            <li><a href="/dashboard/experiments/{experiment.pk}/clients/{second}/"><code>{second}</code></a></li>
          </ul>
        </details>""",
        page,
        count=1,
    )


def test_the_lineage_shows_each_asynchronous_rounds_staleness_mix(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(
        alice, "async", asynchronous={"buffer": 2, "staleness": {"function": "hinge", "a": 1, "b": 0}}
    )
    one, two = enroll(experiment), enroll(experiment)
    submit(experiment, one, 1.0)
    submit(experiment, two, 2.0)
    first = run_round(experiment)
    stale = submit(experiment, one, 3.0)  # trained on the initial model: τ = 1, discount 1/(1·1 + 1)
    fresh = submit(experiment, two, 4.0, base_aggregate_id=first.pk)
    run_round(experiment)

    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode()
    assertInHTML(
        f"""<details class="staleness">
          <summary>staleness mix τ=0 ×1, τ=1 ×1 (hinge(a=1, b=0), buffer 2)</summary>
          <ul class="inputs">
            <li>update {stale.pk}: τ=1, discount 0.5000</li>
            <li>update {fresh.pk}: τ=0, discount 1.0000</li>
          </ul>
        </details>""",
        page,
        count=1,
    )
    assertInHTML("<summary>staleness mix τ=0 ×2 (hinge(a=1, b=0), buffer 2)</summary>", page, count=1)


@pytest.mark.parametrize(("aggregator", "selected"), [("krum", 2), ("bulyan", 5)])
def test_a_robust_rounds_selection_and_each_updates_score_are_in_the_lineage(
    alice, make_experiment, enroll, submit, run_round, alice_browser, aggregator, selected
):
    params = {"f": 1, "m": 2} if aggregator == "krum" else {"f": 1}
    experiment = make_experiment(
        alice,
        "robust",
        aggregator=aggregator,
        aggregator_params=params,
        round_policy={"policy": "require_x_updates", "x": 7},
    )
    updates = [submit(experiment, enroll(experiment), v) for v in (1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 50.0)]
    aggregate = run_round(experiment)
    report = aggregate.report["aggregator"]
    assert len(report["selected"]) == selected
    far = updates[-1]
    assert str(far.pk) not in report["selected"]
    page = html.unescape(alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode())
    assert f"7 updates, {selected} selected" in page
    for place, update_id in enumerate(report["selected"], start=1):
        score = f"{report['scores'][update_id]:.6g}"
        assert f"update {update_id} from" in page
        line = page[page.index(f"update {update_id} from") :].split("</li>")[0]
        assert f"score {score}" in line
        assert f"selected #{place}" in line
    far_line = page[page.index(f"update {far.pk} from") :].split("</li>")[0]
    assert f"score {report['scores'][str(far.pk)]:.6g}" in far_line
    assert "not selected" in far_line


def test_the_held_out_evaluation_is_charted_polled_exported_and_compared(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    declared = {"metrics": {"accuracy": {"goal": "max"}, "loss": {"goal": "min"}}}
    experiment = make_experiment(alice, "evaluated", evaluation=declared)
    client = enroll(experiment)
    submit(experiment, client, 1.0, num_examples=3, metrics={"train_accuracy": 0.5})
    aggregate = run_round(experiment)
    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode()
    # declared metrics have their charts before any evaluation, first, with their goal
    order = [page.index(f'data-chart="{key}"') for key in ("evaluation-accuracy", "evaluation-loss")]
    assert order[0] < order[1] < page.index('data-chart="training-train_accuracy"')
    assert "accuracy — held-out evaluation of each aggregate (higher is better)" in page
    assert "loss — held-out evaluation of each aggregate (lower is better)" in page

    url = f"/dashboard/experiments/{experiment.pk}/live.json"
    cursors: dict[str, str] = {}
    _poll(alice_browser, url, cursors)
    evaluations.evaluation_submit(
        experiment=experiment,
        aggregate_id=aggregate.pk,
        metrics={"accuracy": 0.5},
        num_examples=150,
        client=client,
    )
    evaluations.evaluation_submit(
        experiment=experiment,
        aggregate_id=aggregate.pk,
        metrics={"accuracy": 0.9, "loss": 0.3},
        num_examples=450,
        user=alice,
    )
    regions = _poll(alice_browser, url, cursors)
    assert set(regions) == {"plots"}
    assert regions["plots"]["rows"]
    assert 'data-value="0.8"' in regions["plots"]["html"]  # (0.5·150 + 0.9·450) / 600

    header, row = (
        alice_browser.get(f"/dashboard/experiments/{experiment.pk}/rounds.csv").content.decode().splitlines()
    )
    assert (
        header == "round,evaluation-accuracy,evaluation-loss,training-train_accuracy,participation,duration"
    )
    assert row == f"1,0.8,0.3,0.5,1,{aggregate.duration_seconds!r}"

    other = make_experiment(alice, "baseline", evaluation=declared)
    other_client = enroll(other)
    submit(other, other_client, 1.0)
    evaluations.evaluation_submit(
        experiment=other,
        aggregate_id=run_round(other).pk,
        metrics={"accuracy": 0.6},
        num_examples=450,
        user=alice,
    )
    query = {"experiment": [experiment.pk, other.pk], "chart": "evaluation-accuracy"}
    csv = alice_browser.get("/dashboard/compare/", {**query, "format": "csv"}).content.decode()
    assert csv.splitlines()[1] == "1,0.8,0.6"


def test_the_csv_export_has_every_chart_at_full_precision(
    alice, bob, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "mnist")
    client = enroll(experiment)
    submit(experiment, client, 1.0, num_examples=3, metrics={"loss": 1 / 3})
    aggregate = run_round(experiment)
    url = f"/dashboard/experiments/{experiment.pk}/rounds.csv"
    answer = alice_browser.get(url)
    assert answer["Content-Type"] == "text/csv; charset=utf-8"
    assert answer["Content-Disposition"] == f'attachment; filename="experiment-{experiment.pk}-rounds.csv"'
    header, row = answer.content.decode().splitlines()
    assert header == "round,training-loss,participation,duration"
    assert row == f"1,{1 / 3!r},1,{aggregate.duration_seconds!r}"
    other = Browser()
    other.force_login(bob)
    assert other.get(url).status_code == 404


def test_the_comparison_overlays_one_chart_of_several_own_experiments_and_hides_others(
    alice, bob, make_experiment, enroll, submit, run_round, alice_browser
):
    runs = []
    for name, loss in (("lr-0.1", 0.5), ("lr-0.01", 0.75)):
        experiment = make_experiment(alice, name)
        submit(experiment, enroll(experiment), 1.0, metrics={"loss": loss})
        run_round(experiment)
        runs.append(experiment)
    theirs = make_experiment(bob, "bob-secret")
    query = {"experiment": [r.pk for r in runs], "chart": "training-loss"}
    answer = alice_browser.get("/dashboard/compare/", query)
    chart = answer.context["chart"]
    assert [(s.name, s.points) for s in chart.series] == [
        (f"lr-0.1 #{runs[0].pk}", ((1, 0.5),)),
        (f"lr-0.01 #{runs[1].pk}", ((1, 0.75),)),
    ]
    page = answer.content.decode()
    assert 'data-chart="compare-training-loss"' in page
    assert "bob-secret" not in page
    csv = alice_browser.get("/dashboard/compare/", {**query, "format": "csv"}).content.decode()
    assert csv.splitlines() == [
        f"round,compare-training-loss:lr-0.1 #{runs[0].pk},compare-training-loss:lr-0.01 #{runs[1].pk}",
        "1,0.5,0.75",
    ]
    for ids in ([runs[0].pk, theirs.pk], ["x"], [10**30]):
        assert alice_browser.get("/dashboard/compare/", {"experiment": ids}).status_code == 404


def test_an_unknown_page_answers_404_in_the_dashboards_look_and_the_icon_is_served(alice_browser):
    answer = alice_browser.get("/dashboard/no-such-page/")
    assert answer.status_code == 404
    page = answer.content.decode()
    assert "<h1>Not found</h1>" in page
    assert 'rel="icon"' in page
    assert 'href="/dashboard/"' in page
    redirect = alice_browser.get("/favicon.ico")
    assert redirect["Location"] == "/static/dashboard/favicon.svg"
    icon = alice_browser.get(redirect["Location"])
    assert icon.status_code == 200
    assert b"".join(icon.streaming_content).startswith(b"<svg")
    icon.close()


def test_charts_say_when_they_have_no_data_and_how_their_axes_are_drawn(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    experiment = make_experiment(alice, "mnist")
    url = f"/dashboard/experiments/{experiment.pk}/"
    empty = alice_browser.get(url).content.decode()
    assertInHTML(
        '<p class="no-data">No data yet: the chart starts with the first round that has a value.</p>',
        empty,
        count=2,  # clients per round, aggregation time
    )
    submit(experiment, enroll(experiment), 1.0, metrics={"loss": 0.5})
    run_round(experiment)
    answer = alice_browser.get(url)
    page = answer.content.decode()
    assert '<p class="no-data">' not in page
    charts = {c.key: c for c in answer.context["charts"]}
    assert (
        charts["participation"].y_label,
        charts["participation"].from_zero,
        charts["participation"].integer,
    ) == (
        "clients",
        True,
        True,
    )
    assert (charts["duration"].y_label, charts["duration"].from_zero) == ("aggregation time (s)", True)
    assert not charts["training-loss"].from_zero
    assert "it does not start at 0" in charts["training-loss"].note
    assert (
        '<figure class="chart" data-chart="participation" data-y-label="clients" data-from-zero data-integer data-fixed>'
        in page
    )


def test_a_secure_experiment_shows_its_mode_and_each_rounds_stage_counts(
    alice, make_experiment, alice_browser
):
    experiment = make_experiment(alice, "secure", secure_aggregation={})
    ModelAggregate.objects.create(
        experiment=experiment,
        round_number=1,
        weights_key="aggregates/x.safetensors",
        content_id="0" * 64,
        size_bytes=10,
        aggregator="fedavg",
        duration_seconds=0.1,
        report={
            "secure_aggregation": {
                "stages": {"advertise": 5, "share_keys": 5, "masked_input": 4, "unmasking": 3},
                "invited": 6,
            }
        },
    )
    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode()
    assert "secure (SecAgg+)" in page
    assert "5 → 5 → 4 → 3" in page
    plain = make_experiment(alice, "plain")
    assert "SecAgg" not in alice_browser.get(f"/dashboard/experiments/{plain.pk}/").content.decode()


def test_the_page_shows_the_privacy_budget_spent_and_each_rounds_epsilon(
    alice, make_experiment, enroll, submit, run_round, alice_browser
):
    from fma_core.privacy import epsilon_spent

    privacy = {
        "clip": {"bound": 1.0},
        "noise_multiplier": 1.0,
        "expected_clients": 2,
        "epsilon": 8,
        "delta": 1e-5,
    }
    experiment = make_experiment(alice, "private", privacy=privacy)
    for client in (enroll(experiment), enroll(experiment)):
        submit(experiment, client, 1.0)
    run_round(experiment)
    epsilon = epsilon_spent(1.0, 1, 1e-5)
    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode()
    assertInHTML(
        f"<div><dt>Privacy budget</dt><dd>ε {epsilon:.4g} of 8 at δ 1e-05, 1 round charged</dd></div>",
        page,
        count=1,
    )
    assertInHTML(
        f'<p class="privacy">ε {epsilon:.4f} of 8 spent at δ 0.00001, clip 1.0000 (fixed), noise σ 0.5000</p>',
        page,
        count=1,
    )
    lifecycle.experiment_end(
        experiment=experiment, state="budget_spent", reason="the privacy budget is spent"
    )
    page = alice_browser.get(f"/dashboard/experiments/{experiment.pk}/").content.decode()
    assert "1 round charged: spent, no more rounds" in page
