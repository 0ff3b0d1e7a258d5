"""``fma plan`` / ``fma apply -f``: a folder of experiment files kept in step with a live service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from fma_client import Client, write_file
from fma_client.apply import SCHEMA_PATH, defaults
from fma_client.cli import main
from fma_django import services
from fma_django.api.serializers import ExperimentSerializer
from fma_django.models import Event, Experiment

EXAMPLES = Path(__file__).parents[2] / "examples" / "gitops"


@pytest.fixture
def fma(monkeypatch, tmp_path, capsys, server, dev_token):
    """``fma ARGS…`` against the live service as the developer; returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("FMA_CONFIG", str(tmp_path / "no-config.json"))
    monkeypatch.setenv("FMA_URL", server)
    monkeypatch.setenv("FMA_TOKEN", dev_token)

    def run(*args: str) -> tuple[int, str, str]:
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "experiments"
    path.mkdir()
    write_file({"w": np.zeros((2, 2), np.float32)}, path / "model.safetensors")
    declare(path, "small", name="small", aggregator="median", initial_model="model.safetensors")
    declare(path, "policy", name="policy", round_policy={"policy": "require_x_updates", "x": 2})
    return path


def declare(folder: Path, stem: str, **fields: object) -> None:
    (folder / f"{stem}.yaml").write_text(yaml.safe_dump(fields))


def plan_json(fma, *args: str) -> tuple[int, dict]:
    status, out, _ = fma("--json", "plan", *args)
    return status, json.loads(out)


def test_plan_changes_nothing_apply_creates_and_applying_again_is_a_no_op(fma, folder):
    status, plan = plan_json(fma, "-f", folder)
    assert status == 0
    assert plan["summary"] == {"create": 2, "change": 0, "pause": 0, "unchanged": 0, "refused": 0}
    assert not Experiment.objects.exists()

    status, out, err = fma("apply", "-f", folder)
    assert status == 0, err
    assert "Applied: 2 created, 0 changed, 0 paused, 0 unchanged, 0 refused." in out
    small = Experiment.objects.get(name="small")
    assert small.aggregator == "median"
    assert small.current_artifact is not None  # the initial model, read relative to its file
    assert Experiment.objects.get(name="policy").round_policy == {"policy": "require_x_updates", "x": 2}
    modified = {e.pk: e.last_modified for e in Experiment.objects.all()}
    events = Event.objects.count()

    status, out, _ = fma("apply", "-f", folder)
    assert status == 0
    assert "Applied: 0 created, 0 changed, 0 paused, 2 unchanged, 0 refused." in out
    assert {e.pk: e.last_modified for e in Experiment.objects.all()} == modified
    assert Event.objects.count() == events


def test_settings_the_service_completes_apply_once(fma, tmp_path):
    """A sampling without a seed is given one, a norm bound its defaults: applying the same file again
    is no change, and the seed the rounds draw from stays the first one."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    write_file({"w": np.zeros((2, 2), np.float32)}, folder / "model.safetensors")
    declare(
        folder,
        "robust",
        name="robust",
        initial_model="model.safetensors",
        client_sampling={"clients": 2},
        update_norm={"mode": "clip", "adaptive": {}},
        evaluation={"metrics": {"accuracy": {"goal": "max"}}, "schema": None},
    )
    assert fma("apply", "-f", folder)[0] == 0
    seed = Experiment.objects.get(name="robust").client_sampling["seed"]
    status, plan = plan_json(fma, "-f", folder)
    assert status == 0
    assert plan["summary"] == {"create": 0, "change": 0, "pause": 0, "unchanged": 1, "refused": 0}
    assert fma("apply", "-f", folder)[0] == 0
    assert Experiment.objects.get(name="robust").client_sampling["seed"] == seed


def test_plan_shows_each_changed_field_and_a_removed_line_resets_its_default(fma, folder):
    assert fma("apply", "-f", folder)[0] == 0
    declare(
        folder, "small", name="small", aggregator="trimmed_mean", aggregator_params={"trim_fraction": 0.2}
    )
    declare(folder, "policy", name="policy")  # round_policy removed

    status, out, _ = fma("plan", "-f", folder)
    assert status == 0, out
    assert "~ change 'small'" in out
    assert '    aggregator: "median" -> "trimmed_mean"' in out
    assert '    aggregator_params: {} -> {"trim_fraction": 0.2}' in out
    assert '    round_policy: {"policy": "require_x_updates", "x": 2} -> null' in out
    assert Experiment.objects.get(name="small").aggregator == "median"

    assert fma("apply", "-f", folder)[0] == 0
    small = Experiment.objects.get(name="small")
    assert (small.aggregator, small.aggregator_params) == ("trimmed_mean", {"trim_fraction": 0.2})
    assert Experiment.objects.get(name="policy").round_policy is None
    assert plan_json(fma, "-f", folder)[1]["summary"]["unchanged"] == 2


def test_what_a_running_experiment_cannot_take_is_refused_with_the_services_reason(fma, folder, server):
    assert fma("apply", "-f", folder)[0] == 0
    small = Experiment.objects.get(name="small")
    small.open_enrollment = True
    small.save()
    client = Client.enroll(server, small.pk)
    client.push({"w": np.ones((2, 2), np.float32)}, num_examples=1)
    declare(folder, "small", name="small", aggregator="median", update_kind="delta", enrollment="open")
    declare(folder, "policy", name="policy", aggregator="median")

    status, out, err = fma("plan", "-f", folder)
    assert status == 1
    assert "! refused 'small'" in out
    assert "update_kind cannot change once clients have sent updates" in out
    assert "~ change 'policy'" in out
    assert "refused by the service" in err

    status, _, err = fma("apply", "-f", folder)
    assert status == 1
    assert Experiment.objects.get(name="small").update_kind == "weights"
    assert Experiment.objects.get(name="policy").aggregator == "fedavg"  # nothing applied at all


def test_prune_pauses_experiments_no_file_declares(fma, folder, experiment):
    status, plan = plan_json(fma, "-f", folder, "--prune")
    assert status == 0
    pause = [s for s in plan["steps"] if s["action"] == "pause"]
    assert pause == [
        {
            "action": "pause",
            "name": experiment.name,
            "experiment": experiment.pk,
            "source": None,
            "changes": [{"field": "allow_aggregation", "old": True, "new": False}],
        }
    ]
    assert fma("apply", "-f", folder)[0] == 0
    experiment.refresh_from_db()
    assert experiment.allow_aggregation  # without --prune, left alone

    assert fma("apply", "-f", folder, "--prune")[0] == 0
    experiment.refresh_from_db()
    assert not experiment.allow_aggregation
    assert plan_json(fma, "-f", folder, "--prune")[1]["summary"]["pause"] == 0


def test_an_experiment_made_before_the_files_is_found_by_its_name(fma, folder, developer):
    made = services.experiment_create(developer=developer, name="small")
    status, out, _ = fma("plan", "-f", folder / "policy.yaml", "-f", folder / "small.yaml")
    assert status == 0
    assert f"~ change 'small' #{made.pk}" in out  # that experiment, not a second one
    assert "+ create 'policy'" in out


@pytest.mark.parametrize(
    ("files", "says"),
    [
        (
            {"a": {"name": "a", "agregator": "median"}},
            "unknown field 'agregator' (did you mean 'aggregator'?)",
        ),
        ({"a": {"aggregator": "median"}}, "`name` is required"),
        ({"a": {"name": "x"}, "b": {"name": "x"}}, "both declare an experiment named 'x'"),
        ({}, "no experiment files"),
    ],
)
def test_files_are_checked_before_the_service_is_asked(fma, tmp_path, files, says):
    for stem, fields in files.items():
        declare(tmp_path, stem, **fields)
    status, _, err = fma("apply", "-f", tmp_path)
    assert status == 1
    assert says in err
    assert not Experiment.objects.exists()


def test_the_service_refuses_a_bad_file_in_the_plan(fma, tmp_path):
    declare(tmp_path, "bad", name="bad", aggregator="nope")
    status, out, _ = fma("plan", "-f", tmp_path)
    assert status == 1
    assert "! refused 'bad'" in out
    assert "nope" in out
    assert not Experiment.objects.exists()


def test_the_example_repository_applies_as_it_is(fma, tmp_path):
    folder = tmp_path / "experiments"
    shutil.copytree(EXAMPLES / "experiments", folder)
    assert fma("apply", "-f", folder)[0] == 0
    assert set(Experiment.objects.values_list("name", flat=True)) == {"mnist-fedavg", "mnist-robust"}
    assert plan_json(fma, "-f", folder)[1]["summary"]["unchanged"] == 2
    workflow = yaml.safe_load((EXAMPLES / ".github" / "workflows" / "fma-plan.yml").read_text())
    commands = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert "fma plan -f experiments/ --prune" in commands
    assert "fma apply -f experiments/ --prune" in commands


def test_the_schema_validates_the_examples_and_its_defaults_are_the_services():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in sorted((EXAMPLES / "experiments").glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "agregator": "median"}, schema)
    for evaluation in ({"metrics": {"accuracy": "max"}}, {"metrics": {"num_examples": {"goal": "max"}}}):
        with pytest.raises(jsonschema.ValidationError):  # as the service refuses it
            jsonschema.validate({"name": "x", "evaluation": evaluation}, schema)
    for name, default in defaults().items():
        field = Experiment._meta.get_field(name)
        assert (field.get_default() if field.has_default() else None) == default, name
    writable = {n for n, f in ExperimentSerializer().fields.items() if not f.read_only} - {"developer"}
    assert set(schema["properties"]) == writable | {"enrollment"}


def test_a_staff_developer_applies_to_her_own_experiments_only(fma, folder, developer, django_user_model):
    developer.is_staff = True
    developer.save()
    other = django_user_model.objects.create_user("other", password="other-password")
    theirs = services.experiment_create(developer=other, name="small")
    status, plan = plan_json(fma, "-f", folder, "--prune")
    assert status == 0
    assert plan["summary"] == {"create": 2, "change": 0, "pause": 0, "unchanged": 0, "refused": 0}
    assert fma("apply", "-f", folder, "--prune")[0] == 0
    theirs.refresh_from_db()
    assert (theirs.aggregator, theirs.allow_aggregation) == ("fedavg", True)
    assert Experiment.objects.get(name="small", developer=developer).aggregator == "median"


def test_an_asynchronous_experiment_applies_and_the_plan_shows_the_services_refusal(fma, tmp_path):
    folder = tmp_path / "experiments"
    folder.mkdir()
    write_file({"w": np.zeros((2, 2), np.float32)}, folder / "model.safetensors")
    setting = {"buffer": 4, "staleness": {"function": "polynomial", "a": 0.5}, "max_staleness": 8}
    declare(folder, "async", name="async", initial_model="model.safetensors", asynchronous=setting)
    assert fma("apply", "-f", folder)[0] == 0
    assert Experiment.objects.get(name="async").asynchronous == setting
    assert plan_json(fma, "-f", folder)[1]["summary"]["unchanged"] == 1  # applying again: no change
    declare(
        folder,
        "async",
        name="async",
        initial_model="model.safetensors",
        asynchronous=setting,
        aggregator="median",
    )
    status, out, _ = fma("plan", "-f", folder)
    assert status == 1
    assert "cannot run asynchronous rounds" in out
    declare(folder, "bad", name="bad", asynchronous={"buffer": 0})
    status, out, err = fma("apply", "-f", folder)
    assert status == 1
    assert "asynchronous.buffer" in out
    assert "nothing was changed" in err
    assert Experiment.objects.get(name="async").aggregator == "fedavg"
