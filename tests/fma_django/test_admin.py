"""The admin lists every entity with its state, and its actions go through the services."""

from __future__ import annotations

import json
import re

import pytest
from django.forms import modelform_factory
from django.urls import reverse

from fma_core.rounds import RoundEngine
from fma_django.admin import ExperimentForm
from fma_django.models import Client, Event, EventKind, Experiment, ModelAggregate
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore


@pytest.fixture
def populated(experiment, client_api, uploader, safetensors):
    assert uploader(client_api, experiment.pk, safetensors(1.0)).status_code == 201
    RoundEngine(DjangoMetadataStore(), weight_store(), threads=1).run_round(str(experiment.pk))
    return experiment


MODELS = [
    "experiment",
    "client",
    "modelupdate",
    "modelaggregate",
    "modelartifact",
    "evaluation",
    "enrollment",
    "enrollmenttoken",
    "roundlease",
    "roundselection",
    "uploadsession",
    "event",
]
# made only by the service, with bytes in the weight store and hashes a form cannot give
SERVICE_RECORDS = [
    "modelupdate",
    "modelaggregate",
    "modelartifact",
    "roundlease",
    "uploadsession",
    "evaluation",
    "roundselection",
]


@pytest.mark.parametrize("model", MODELS)
def test_every_changelist_renders(admin_client, populated, model):
    response = admin_client.get(reverse(f"admin:fma_django_{model}_changelist"))
    assert response.status_code == 200


def test_experiment_list_shows_round_progress_and_clients(admin_client, populated):
    page = admin_client.get(reverse("admin:fma_django_experiment_changelist")).content.decode()
    assert 'class="field-rounds">1<' in page
    assert 'class="field-client_count">1<' in page
    assert 'class="field-pending_updates">0<' in page


def test_actions_pause_resume_publish_and_revoke(admin_client, populated):
    experiments = reverse("admin:fma_django_experiment_changelist")
    admin_client.post(experiments, {"action": "pause_aggregation", "_selected_action": [populated.pk]})
    populated.refresh_from_db()
    assert populated.allow_aggregation is False
    admin_client.post(experiments, {"action": "resume_aggregation", "_selected_action": [populated.pk]})
    populated.refresh_from_db()
    assert populated.allow_aggregation is True

    aggregate = ModelAggregate.objects.get()
    admin_client.post(
        reverse("admin:fma_django_modelaggregate_changelist"),
        {"action": "publish", "_selected_action": [aggregate.pk]},
    )
    populated.refresh_from_db()
    assert populated.current_artifact.aggregate_id == aggregate.pk

    client = Client.objects.get()
    admin_client.post(
        reverse("admin:fma_django_client_changelist"), {"action": "revoke", "_selected_action": [client.pk]}
    )
    client.refresh_from_db()
    assert client.is_revoked
    kinds = set(Event.objects.values_list("kind", flat=True))
    assert {
        EventKind.AGGREGATION_PAUSED,
        EventKind.AGGREGATION_RESUMED,
        EventKind.PUBLISHED,
        EventKind.CREDENTIAL_REVOKED,
    } <= kinds


def test_events_are_append_only(admin_client, populated):
    from fma_django.models import AppendOnly

    event = Event.objects.first()
    with pytest.raises(AppendOnly):
        event.save()
    with pytest.raises(AppendOnly):
        event.delete()
    assert admin_client.get(reverse("admin:fma_django_event_change", args=[event.pk])).status_code == 200
    assert (
        admin_client.post(
            reverse("admin:fma_django_event_delete", args=[event.pk]), {"post": "yes"}
        ).status_code
        == 403
    )


def test_an_aggregate_shows_its_algorithm_parameters_and_server_state_read_only(admin_client, populated):
    aggregate = ModelAggregate.objects.get()
    state = "c" * 64
    ModelAggregate.objects.filter(pk=aggregate.pk).update(
        aggregator_params={"server_lr": 0.1}, state_key="aggregates/state.safetensors", state_content_id=state
    )
    url = reverse("admin:fma_django_modelaggregate_change", args=[aggregate.pk])
    page = admin_client.get(url).content.decode()
    for field, shown in (
        ("aggregator", "fedavg"),
        ("aggregator_params", "{&quot;server_lr&quot;: 0.1}"),
        ("state_key", "aggregates/state.safetensors"),
        ("state_content_id", state),
    ):
        assert re.search(
            # within the field's own row of the form
            rf'class="form-row field-{field}"(?:(?!form-row).)*'
            rf'<div class="readonly">{re.escape(shown)}</div>',
            page,
            re.S,
        ), field
        assert f'name="{field}"' not in page  # no input: read-only
    saved = admin_client.post(url, {"state_content_id": "0" * 64, "validation_score": "0.5"})
    assert saved.status_code == 302
    aggregate.refresh_from_db()
    assert (aggregate.state_content_id, aggregate.validation_score) == (state, 0.5)


def test_the_experiment_form_refuses_a_bound_the_api_refuses(experiment):
    form_class = modelform_factory(Experiment, form=ExperimentForm, fields=["name", "update_norm"])
    refused = form_class({"name": "m", "update_norm": '{"mode": "clip", "bound": -1}'}, instance=experiment)
    assert not refused.is_valid()
    assert refused.errors["update_norm"] == ["update_norm.bound must be a finite number above 0, not -1"]
    accepted = form_class({"name": "m", "update_norm": '{"mode": "refuse", "bound": 3}'}, instance=experiment)
    assert accepted.is_valid(), accepted.errors


def test_the_experiment_form_refuses_an_evaluation_setting_the_api_refuses(experiment):
    form_class = modelform_factory(Experiment, form=ExperimentForm, fields=["name", "evaluation"])
    refused = form_class({"name": "m", "evaluation": '{"metrics": {"accuracy": "max"}}'}, instance=experiment)
    assert not refused.is_valid()
    assert "metric 'accuracy' is {goal: max}" in refused.errors["evaluation"][0]
    declared = '{"metrics": {"accuracy": {"goal": "max"}}}'
    assert form_class({"name": "m", "evaluation": declared}, instance=experiment).is_valid()


def test_the_experiment_form_checks_client_sampling_and_keeps_a_seed(admin_client, experiment):
    url = reverse("admin:fma_django_experiment_change", args=[experiment.pk])
    form = {
        "name": experiment.name,
        "developer": experiment.developer_id,
        "aggregator": experiment.aggregator,
        "aggregator_params": "{}",
        "update_kind": experiment.update_kind,
        "allow_aggregation": "on",
        "enrollments-TOTAL_FORMS": "0",
        "enrollments-INITIAL_FORMS": "0",
    }
    refused = admin_client.post(url, {**form, "client_sampling": json.dumps({"fraction": 0})})
    assert refused.status_code == 200  # the form again, with the error
    assert "&#x27;fraction&#x27; must be in (0, 1]" in refused.content.decode()
    assert Experiment.objects.get(pk=experiment.pk).client_sampling is None

    saved = admin_client.post(url, {**form, "client_sampling": json.dumps({"clients": 3})})
    assert saved.status_code == 302
    config = Experiment.objects.get(pk=experiment.pk).client_sampling
    assert config == {"clients": 3, "seed": config["seed"], "mode": "uniform"}
    assert isinstance(config["seed"], int)


@pytest.mark.parametrize("model", SERVICE_RECORDS)
def test_records_only_the_service_makes_offer_no_add_form(admin_client, populated, model):
    url = reverse(f"admin:fma_django_{model}_add")
    assert admin_client.get(url).status_code == 403
    assert admin_client.post(url, {}).status_code == 403
    listing = admin_client.get(reverse(f"admin:fma_django_{model}_changelist")).content.decode()
    assert url not in listing
    assert url not in admin_client.get(reverse("admin:index")).content.decode()


def test_the_add_forms_the_admin_still_offers_open(admin_client, populated):
    for model in ("experiment", "client", "enrollment"):
        assert admin_client.get(reverse(f"admin:fma_django_{model}_add")).status_code == 200, model


def test_numbers_are_rounded_times_carry_their_zone_and_event_details_read_as_text(admin_client, populated):
    aggregate = ModelAggregate.objects.get()
    ModelAggregate.objects.filter(pk=aggregate.pk).update(
        duration_seconds=0.123456789, validation_score=2 / 3
    )
    Event.objects.create(
        kind=EventKind.UPDATE_REJECTED, experiment=populated, detail={"reason": "not finite"}
    )
    page = admin_client.get(reverse("admin:fma_django_modelaggregate_changelist")).content.decode()
    assert 'class="field-duration">0.123<' in page
    assert 'class="field-score">0.6667<' in page
    assert "0.123456789" not in page
    assert re.search(r'class="field-created_on nowrap">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC<', page)
    detail = admin_client.get(reverse("admin:fma_django_modelaggregate_change", args=[aggregate.pk]))
    assert "0.123456789" not in detail.content.decode()
    events = admin_client.get(reverse("admin:fma_django_event_changelist")).content.decode()
    assert '<span class="event-detail">reason: not finite</span>' in events
    assert "{&quot;reason&quot;" not in events
