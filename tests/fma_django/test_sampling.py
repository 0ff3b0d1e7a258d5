"""Per-round client sampling on the service: configured through the API, drawn once per round from
the recorded seed, asked by clients, enforced on every push form, counted by round policies, and
kept in the round's report."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from fma_core.rounds import RoundEngine
from fma_core.sampling import ClientSampling, draw
from fma_core.shards import RoundPlan
from fma_django import sampling
from fma_django.models import Event, EventKind, ModelAggregate, ModelUpdate, RoundSelection, UploadSession
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore

RETRY = 45


@pytest.fixture(autouse=True)
def retry_seconds(settings):
    settings.FMA_SAMPLING_RETRY_SECONDS = RETRY


def enrolled(experiment, enroll, count):
    return {api.uuid: api for api in (enroll(experiment) for _ in range(count))}


def selected_of(experiment, clients):
    answers = {}
    for uuid, api in clients.items():
        response = api.get(f"/api/v1/models/{experiment.pk}/participation/")
        assert response.status_code == 200, response.content
        answers[uuid] = response
    return {uuid for uuid, r in answers.items() if r.json()["selected"]}, answers


def run_round(experiment):
    return RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))


def push(api, experiment, body):
    return api.generic(
        "POST",
        f"/api/v1/models/{experiment.pk}/upload_update/",
        body,
        content_type="application/octet-stream",
    )


def test_the_api_stores_a_sampling_with_a_seed_and_refuses_a_bad_one(dev_api, weights_dir):
    made = dev_api.post("/api/v1/models/", {"name": "m", "client_sampling": {"fraction": 0.2}}, format="json")
    assert made.status_code == 201, made.content
    config = made.json()["client_sampling"]
    assert config["fraction"] == 0.2
    assert config["mode"] == "uniform"
    assert isinstance(config["seed"], int)

    bad = dev_api.post("/api/v1/models/", {"name": "m", "client_sampling": {"fraction": 2}}, format="json")
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_client_sampling"
    assert "'fraction' must be in (0, 1]" in bad.json()["detail"]
    patched = dev_api.patch(
        f"/api/v1/models/{made.json()['id']}/",
        {"client_sampling": {"clients": 2, "mode": "sometimes"}},
        format="json",
    )
    assert patched.status_code == 400
    assert "unknown mode 'sometimes'" in patched.json()["detail"]
    assert dev_api.get(f"/api/v1/models/{made.json()['id']}/").json()["client_sampling"] == config


def test_each_round_selects_the_seeded_draw_once_and_refuses_the_others(
    make_experiment, enroll, safetensors, stored_files
):
    experiment = make_experiment(client_sampling={"clients": 2, "seed": 11}, round_policy="all_clients")
    clients = enrolled(experiment, enroll, 5)
    chosen, answers = selected_of(experiment, clients)

    assert chosen == set(draw(ClientSampling(seed=11, clients=2), 1, clients))
    for uuid, response in answers.items():
        assert response.json()["round"] == 1
        if uuid not in chosen:
            assert response.json()["retry_after"] == RETRY
            assert response["Retry-After"] == str(RETRY)
    enroll(experiment)  # a client enrolling later does not change the round's draw
    assert selected_of(experiment, clients)[0] == chosen
    assert RoundSelection.objects.get().clients == sorted(chosen)

    before = stored_files()
    outsider = next(uuid for uuid in clients if uuid not in chosen)
    refused = push(clients[outsider], experiment, safetensors(9.0))
    assert refused.status_code == 409
    assert refused.json()["code"] == "not_selected"
    assert refused["Retry-After"] == str(RETRY)
    assert "not among the clients selected for round 1" in refused.json()["detail"]
    assert f"Come back in {RETRY} s" in refused.json()["detail"]
    assert stored_files() == before
    assert not ModelUpdate.objects.exists()
    assert Event.objects.filter(kind=EventKind.UPDATE_REJECTED, client__uuid=outsider).exists()

    first, second = sorted(chosen)
    assert push(clients[first], experiment, safetensors(1.0)).status_code == 201
    assert run_round(experiment).status == "not_ready"  # all_clients: all *selected* clients
    assert push(clients[second], experiment, safetensors(3.0)).status_code == 201
    assert run_round(experiment).status == "committed"

    aggregate = ModelAggregate.objects.get()
    report = {"seed": 11, "mode": "uniform", "round": 1, "enrolled": 5, "selected": sorted(chosen)}
    assert aggregate.report["sampling"] == report
    # round 2 draws anew, from the same seed, over the clients enrolled now (the late one too)
    round_two = set(draw(ClientSampling(seed=11, clients=2), 2, sampling.enrolled_clients(experiment.pk)))
    assert selected_of(experiment, clients)[0] == round_two & set(clients)
    assert RoundSelection.objects.get(round_number=2).clients == sorted(round_two)


def test_the_round_report_is_shown_with_the_aggregate(make_experiment, enroll, safetensors, dev_api):
    experiment = make_experiment(client_sampling={"clients": 1, "seed": 5})
    clients = enrolled(experiment, enroll, 3)
    (chosen,) = selected_of(experiment, clients)[0]
    assert push(clients[chosen], experiment, safetensors(1.0)).status_code == 201
    assert run_round(experiment).status == "committed"
    detail = dev_api.get(f"/api/v1/model_aggregates/{ModelAggregate.objects.get().pk}/").json()
    assert detail["report"]["sampling"]["selected"] == [chosen]
    assert detail["report"]["sampling"]["seed"] == 5


def test_an_upload_session_and_a_v1_json_push_are_refused_before_any_byte(
    make_experiment, enroll, safetensors, stored_files
):
    experiment = make_experiment(client_sampling={"clients": 1, "seed": 3})
    clients = enrolled(experiment, enroll, 3)
    chosen, _ = selected_of(experiment, clients)
    outsider = clients[next(uuid for uuid in clients if uuid not in chosen)]
    before = stored_files()
    body = safetensors(2.0)
    opened = outsider.post(
        f"/api/v1/models/{experiment.pk}/uploads/",
        {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()},
        format="json",
    )
    assert opened.status_code == 409
    assert opened.json()["code"] == "not_selected"
    assert opened["Retry-After"] == str(RETRY)
    legacy = outsider.post(
        "/api/v1/model_updates/",
        {"federated_model": experiment.pk, "data": [[[0.0] * 3] * 4, [0.0] * 3]},
        format="json",
    )
    assert legacy.status_code == 409
    assert legacy.json()["code"] == "not_selected"
    assert not UploadSession.objects.exists()
    assert not ModelUpdate.objects.exists()
    assert stored_files() == before


def test_an_upload_begun_in_a_round_that_ended_is_refused_at_accept(
    make_experiment, enroll, safetensors, stored_files
):
    """A session opened while selected, completed once the next round (which did not select it) is current."""
    experiment = make_experiment(client_sampling={"clients": 1, "seed": 0})
    clients = enrolled(experiment, enroll, 3)
    seed = next(
        s
        for s in range(100)
        if draw(ClientSampling(seed=s, clients=1), 1, clients)
        != draw(ClientSampling(seed=s, clients=1), 2, clients)
    )
    experiment.client_sampling = {"clients": 1, "seed": seed}
    experiment.save()
    (chosen,) = draw(ClientSampling(seed=seed, clients=1), 1, clients)
    api = clients[chosen]
    body = safetensors(2.0)
    opened = api.post(
        f"/api/v1/models/{experiment.pk}/uploads/",
        {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()},
        format="json",
    )
    assert opened.status_code == 201, opened.content
    assert push(api, experiment, safetensors(1.0)).status_code == 201
    assert run_round(experiment).status == "committed"  # round 2 is current; it did not select this client
    before = stored_files()
    session = opened.json()
    for target in session["targets"]:
        part = body[target["offset"] : target["offset"] + target["size"]]
        assert (
            api.generic("PUT", target["url"], part, content_type="application/octet-stream").status_code
            == 200
        )

    completed = api.post(f"/api/v1/models/{experiment.pk}/uploads/{session['id']}/complete/")

    assert completed.status_code == 409
    assert completed.json()["code"] == "not_selected"
    assert UploadSession.objects.get().state == "rejected"
    assert ModelUpdate.objects.count() == 1
    assert set(stored_files()) <= set(before)


def test_longest_waiting_takes_every_client_in_turn(make_experiment, enroll, safetensors):
    experiment = make_experiment(client_sampling={"clients": 1, "mode": "longest_waiting"})
    clients = enrolled(experiment, enroll, 3)
    turns = []
    for _ in range(3):
        (chosen,) = selected_of(experiment, clients)[0]
        turns.append(chosen)
        assert push(clients[chosen], experiment, safetensors(1.0)).status_code == 201
        assert run_round(experiment).status == "committed"
    assert sorted(turns) == sorted(clients)  # nobody twice before everyone once


def test_two_requests_drawing_the_same_round_agree_on_the_first(make_experiment, enroll, monkeypatch):
    """The draw is stored once: a request that loses the race to record it answers with the winner's."""
    experiment = make_experiment(client_sampling={"clients": 1, "seed": 1})
    clients = enrolled(experiment, enroll, 3)
    winner = sorted(clients)[-1]
    drawn = []

    def racing_draw(*args, **kwargs):
        drawn.append(args)
        if len(drawn) == 1:  # another request records its draw while this one computes
            RoundSelection.objects.create(
                experiment=experiment, round_number=1, seed=1, mode="uniform", clients=[winner], enrolled=3
            )
        return ("someone-else",)

    monkeypatch.setattr(sampling, "draw", racing_draw)
    assert sampling.round_selection(experiment, 1).clients == [winner]
    assert RoundSelection.objects.get().clients == [winner]
    monkeypatch.undo()
    assert selected_of(experiment, clients)[0] == {winner}


def test_a_deadline_sooner_than_the_retry_interval_is_said_instead(make_experiment, enroll, safetensors):
    experiment = make_experiment(
        client_sampling={"clients": 1, "seed": 2},
        round_policy={"any_of": ["all_clients", {"policy": "deadline", "seconds": 10}]},
    )
    clients = enrolled(experiment, enroll, 2)
    chosen, _ = selected_of(experiment, clients)
    assert push(clients[next(iter(chosen))], experiment, safetensors(1.0)).status_code == 201
    answer = selected_of(experiment, clients)[1][next(u for u in clients if u not in chosen)].json()
    assert answer["selected"] is False
    assert 1 <= answer["retry_after"] <= 10


def test_an_experiment_without_sampling_selects_everyone(experiment, client_api):
    answer = client_api.get(f"/api/v1/models/{experiment.pk}/participation/")
    assert answer.json() == {"selected": True, "round": 1, "retry_after": None}
    assert "Retry-After" not in answer
    assert not RoundSelection.objects.exists()


def test_participation_is_for_enrolled_clients_only(make_experiment, enroll, dev_api):
    experiment = make_experiment(client_sampling={"clients": 1})
    other = make_experiment(name="other", client_sampling={"clients": 1})
    stranger = enroll(other)
    assert stranger.get(f"/api/v1/models/{experiment.pk}/participation/").status_code == 404
    assert dev_api.get(f"/api/v1/models/{experiment.pk}/participation/").status_code == 403


def test_a_rounds_draw_travels_in_its_plan_to_the_worker_that_commits(make_experiment, enroll, safetensors):
    """A plan travels as JSON to each shard's worker (Celery, Lambda); the one that commits reports the draw."""
    experiment = make_experiment(client_sampling={"clients": 1, "seed": 6})
    clients = enrolled(experiment, enroll, 2)
    (chosen,) = selected_of(experiment, clients)[0]
    assert push(clients[chosen], experiment, safetensors(1.0)).status_code == 201
    engine = RoundEngine(DjangoMetadataStore(), weight_store(), threads=1)
    plan = engine.start_round(str(experiment.pk))
    travelled = RoundPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert travelled.claim.selection == plan.claim.selection
    assert travelled.claim.enrolled_clients == frozenset([chosen])  # what the policy counted

    assert engine.finish_shard(travelled, 0).status == "committed"
    assert ModelAggregate.objects.get().report["sampling"]["selected"] == [chosen]


def test_clients_asking_at_once_over_http_agree_on_one_draw(
    require_postgresql, transactional_db, live_server, weights_dir, developer
):
    """Twelve clients ask for the first time at the same instant, each drawing the round in its own
    request and transaction: one draw is stored, and every answer agrees with it."""
    from fma_django import services

    experiment = services.experiment_create(
        developer=developer,
        name="crowd",
        open_enrollment=True,
        tensor_spec=[{"name": "w", "dtype": "F32", "shape": [2]}],
        client_sampling={"clients": 4},
    )
    credentials = [services.client_register(experiment=experiment)[1] for _ in range(12)]
    start = threading.Barrier(len(credentials))

    def ask(credential: str) -> tuple[str, bool]:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Client {credential}"
            start.wait(timeout=60)
            answer = http.get(f"{live_server.url}/api/v1/models/{experiment.pk}/participation/", timeout=60)
            assert answer.status_code == 200, answer.text
            return credential.partition(".")[0], answer.json()["selected"]

    with ThreadPoolExecutor(len(credentials)) as pool:
        answers = dict(pool.map(ask, credentials))

    (drawn,) = RoundSelection.objects.filter(experiment=experiment)
    assert {uuid for uuid, selected in answers.items() if selected} == set(drawn.clients)
    assert len(drawn.clients) == 4


def test_a_selected_client_revoked_meanwhile_is_no_longer_waited_for(make_experiment, enroll, safetensors):
    from fma_django import services
    from fma_django.models import Client

    experiment = make_experiment(client_sampling={"clients": 2, "seed": 4}, round_policy="all_clients")
    clients = enrolled(experiment, enroll, 3)
    stays, leaves = sorted(selected_of(experiment, clients)[0])
    services.enrollment_revoke(
        experiment=experiment, client=Client.objects.get(uuid=leaves), user=experiment.developer
    )
    assert push(clients[stays], experiment, safetensors(1.0)).status_code == 201

    assert run_round(experiment).status == "committed"  # all_clients: all selected and still enrolled
    sampled = ModelAggregate.objects.get().report["sampling"]
    assert sampled["selected"] == sorted([stays, leaves])  # the draw as it was made
