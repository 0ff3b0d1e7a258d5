"""What ``fma plan`` / ``fma apply`` rely on: experiment names unique per developer (files are matched to
experiments by name; a migration renames earlier duplicates), ``dry_run`` (would a create or a change
pass? nothing stored), and the changes a running experiment refuses."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, connections
from django.db.migrations.executor import MigrationExecutor

from fma_django import services
from fma_django.errors import DuplicateName
from fma_django.models import Event, Experiment

MIGRATION = ("fma_django", "0011_experiment_name_unique")


def test_a_second_experiment_with_the_same_name_is_refused(dev_api, experiment):
    response = dev_api.post("/api/v1/models/", {"name": experiment.name}, format="json")
    assert response.status_code == 409, response.content
    assert response.json()["code"] == "duplicate_name"
    assert f"(#{experiment.pk})" in response.json()["detail"]
    assert Experiment.objects.count() == 1


def test_renaming_onto_a_taken_name_is_refused(dev_api, make_experiment):
    first, second = make_experiment(name="a"), make_experiment(name="b")
    response = dev_api.patch(f"/api/v1/models/{second.pk}/", {"name": "a"}, format="json")
    assert response.status_code == 409, response.content
    assert response.json()["code"] == "duplicate_name"
    second.refresh_from_db()
    assert second.name == "b"
    assert dev_api.patch(f"/api/v1/models/{first.pk}/", {"name": "a"}, format="json").status_code == 200


def test_another_developer_may_use_the_same_name(other_dev_api, experiment):
    response = other_dev_api.post("/api/v1/models/", {"name": experiment.name}, format="json")
    assert response.status_code == 201, response.content


def test_a_dry_run_create_checks_everything_and_stores_nothing(dev_api, weights_dir):
    good = dev_api.post("/api/v1/models/?dry_run=true", {"name": "m"}, format="json")
    assert good.status_code == 204, good.content
    bad = dev_api.post("/api/v1/models/?dry_run=true", {"name": "m", "aggregator": "nope"}, format="json")
    assert bad.status_code == 400
    assert "nope" in bad.json()["detail"]
    spec = [{"name": "w", "dtype": "F32", "shape": [3]}]
    model = dev_api.post(
        "/api/v1/models/?dry_run=true",
        {"name": "m", "tensor_spec": spec, "initial_model": [[1.0, 2.0]]},
        format="json",
    )
    assert model.status_code == 400, model.content
    assert model.json()["code"] == "invalid_weights"
    assert not Experiment.objects.exists()
    assert not Event.objects.exists()
    assert not weights_dir.exists() or not any(weights_dir.rglob("*.safetensors"))


def test_a_dry_run_change_answers_the_experiment_as_it_would_be(dev_api, experiment):
    response = dev_api.patch(
        f"/api/v1/models/{experiment.pk}/?dry_run=1",
        {"aggregator": "median", "allow_aggregation": False},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["aggregator"] == "median"
    assert response.json()["allow_aggregation"] is False
    experiment.refresh_from_db()
    assert (experiment.aggregator, experiment.allow_aggregation) == ("fedavg", True)
    assert not Event.objects.filter(experiment=experiment).exclude(kind="experiment_created").exists()


def test_a_dry_run_refuses_what_a_running_experiment_cannot_take(
    dev_api, experiment, client_api, uploader, safetensors
):
    assert uploader(client_api, experiment.pk, safetensors(1.0)).status_code == 201
    response = dev_api.patch(
        f"/api/v1/models/{experiment.pk}/?dry_run=true", {"update_kind": "delta"}, format="json"
    )
    assert response.status_code == 409
    assert "update_kind cannot change" in response.json()["detail"]


def test_dry_run_takes_only_true_or_false(dev_api, experiment):
    response = dev_api.patch(f"/api/v1/models/{experiment.pk}/?dry_run=maybe", {"name": "x"}, format="json")
    assert response.status_code == 400
    assert "dry_run" in response.json()["detail"]
    experiment.refresh_from_db()
    assert experiment.name != "x"


@pytest.mark.django_db(transaction=True)
def test_the_migration_renames_existing_duplicates_then_holds_names_unique():
    executor = MigrationExecutor(connection)
    before = executor.loader.get_migration(*MIGRATION).dependencies
    leaves = executor.loader.graph.leaf_nodes()
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        user_model, experiment_model = (
            old.get_model("auth", "User"),
            old.get_model("fma_django", "Experiment"),
        )
        alice = user_model.objects.create(username="alice")
        bob = user_model.objects.create(username="bob")
        long_name = "n" * 255
        names = ["mnist", "mnist", "mnist (2)", "mnist", "other", long_name, long_name]
        rows = [experiment_model.objects.create(developer=alice, name=name) for name in names]
        bobs = experiment_model.objects.create(developer=bob, name="mnist")

        executor = MigrationExecutor(connection)
        executor.migrate([MIGRATION])

        new = executor.loader.project_state([MIGRATION]).apps.get_model("fma_django", "Experiment")
        renamed = dict(new.objects.filter(developer_id=alice.pk).values_list("pk", "name"))
        assert [renamed[row.pk] for row in rows] == [
            "mnist",
            "mnist (3)",  # "mnist (2)" was taken already
            "mnist (2)",
            "mnist (4)",
            "other",
            long_name,
            "n" * 251 + " (2)",
        ]
        assert new.objects.get(pk=bobs.pk).name == "mnist"
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(leaves)
    alice = User.objects.get(username="alice")
    with pytest.raises(IntegrityError):
        Experiment.objects.create(developer=alice, name="mnist")


def test_the_tensors_of_an_experiment_with_a_model_cannot_change(dev_api, experiment):
    same = dev_api.patch(
        f"/api/v1/models/{experiment.pk}/", {"tensor_spec": experiment.tensor_spec}, format="json"
    )
    assert same.status_code == 200, same.content
    spec = [{"name": "w", "dtype": "F32", "shape": [3]}]
    response = dev_api.patch(
        f"/api/v1/models/{experiment.pk}/?dry_run=true", {"tensor_spec": spec}, format="json"
    )
    assert response.status_code == 409
    assert "tensor_spec cannot change" in response.json()["detail"]
    experiment.refresh_from_db()
    assert experiment.tensor_spec != spec


def test_racing_creates_of_one_name_make_one_experiment(require_postgresql, transactional_db, developer):
    racers = 6
    start = threading.Barrier(racers)

    def create(_: int) -> str:
        start.wait()
        try:
            services.experiment_create(developer=developer, name="raced")
            return "created"
        except DuplicateName:
            return "duplicate"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(racers) as pool:
        outcomes = sorted(pool.map(create, range(racers)))
    assert outcomes == ["created", *["duplicate"] * (racers - 1)]
    assert Experiment.objects.filter(name="raced").count() == 1
