"""The admin: every entity, with the state a developer looks for, and actions that call the services.

Records that only the service makes (updates, upload sessions, aggregates, artifacts, evaluations, round
leases, sampled rounds' draws) can be looked at, never added by hand: each comes with bytes in the weight store, hashes and
checks that a form cannot give, so the admin offers no Add for them (``ServiceRecordAdmin``).
Numbers are shown rounded, times with their zone (``fma_service.formats``), event details as text.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Max, Q, QuerySet
from django.http import HttpRequest
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from fma_core.asynchronous import AsyncMode
from fma_core.errors import ConfigurationError
from fma_core.norms import NormPolicy
from fma_core.privacy import PrivacyPolicy
from fma_core.sampling import sampling_from_config
from fma_core.secagg.config import SecureAggregation
from fma_django import evaluations, json_schemas, lifecycle, services
from fma_django.errors import Conflict, DomainError, ValidationFailed
from fma_django.models import (
    Client,
    DeveloperToken,
    Enrollment,
    EnrollmentToken,
    Evaluation,
    Event,
    Experiment,
    ExperimentState,
    ModelAggregate,
    ModelArtifact,
    ModelUpdate,
    RoundLease,
    RoundSelection,
    UpdateStatus,
    UploadSession,
)

# The admin's side menu takes a quarter of a 1440 px screen from every list; its index page lists the same.
admin.site.enable_nav_sidebar = False


class ServiceRecordAdmin(admin.ModelAdmin):
    """A record only the service creates: viewed (and, where a model admin allows, acted on), never added."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


def _rounded(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _short_uuid(value: object) -> SafeString:
    """A client's UUID in a list: its first 8 characters, the whole of it on hover (and in search)."""
    return format_html('<span title="{}">{}…</span>', value, str(value)[:8])


class EnrollmentInline(admin.TabularInline):
    model = Enrollment
    extra = 0
    fields = ["client", "via", "created_on", "revoked_at"]
    readonly_fields = fields
    can_delete = False


class ExperimentForm(forms.ModelForm):
    """The admin's experiment form refuses the schemas, norm bounds, client sampling and evaluation
    settings the API refuses (see ``fma_django.json_schemas``, ``fma_core.norms``, ``fma_core.sampling``,
    ``fma_django.evaluations``), and keeps a sampling's seed as the API does."""

    def clean(self) -> dict:
        cleaned = super().clean()
        try:
            NormPolicy.from_config(cleaned.get("update_norm"))
        except ConfigurationError as error:
            self.add_error("update_norm", str(error))
        try:
            PrivacyPolicy.from_config(cleaned.get("privacy"))
        except ConfigurationError as error:
            self.add_error("privacy", str(error))
        try:
            sampling = sampling_from_config(cleaned.get("client_sampling"))
        except ConfigurationError as error:
            self.add_error("client_sampling", str(error))
        else:
            cleaned["client_sampling"] = sampling.to_config() if sampling is not None else None
        try:
            lifecycle.finish_when_check(cleaned.get("finish_when"))
        except ValidationFailed as error:
            self.add_error("finish_when", error.detail)
        try:
            mode = AsyncMode.from_config(cleaned.get("asynchronous"))
        except ConfigurationError as error:
            self.add_error("asynchronous", str(error))
        else:
            cleaned["asynchronous"] = mode.to_config() if mode is not None else None
        try:
            secure = SecureAggregation.from_config(cleaned.get("secure_aggregation"))
        except ConfigurationError as error:
            self.add_error("secure_aggregation", str(error))
        else:
            cleaned["secure_aggregation"] = secure.to_config() if secure is not None else None
        try:
            cleaned["evaluation"] = evaluations.config_check(cleaned.get("evaluation"))
        except ValidationFailed as error:
            self.add_error("evaluation", error.detail)
        for field in json_schemas.SCHEMA_FIELDS:
            if cleaned.get(field) is not None:
                try:
                    json_schemas.schema_check(field=field, schema=cleaned[field])
                except ValidationFailed as error:
                    self.add_error(field, error.detail)
        return cleaned


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    form = ExperimentForm
    list_display = [
        "id",
        "name",
        "developer",
        "aggregator",
        "state",
        "rounds",
        "pending_updates",
        "client_count",
        "current_artifact",
    ]  # legacy mode and times are in the filters and on the page: eleven columns overflowed 1440 px
    list_filter = ["state", "legacy_mode", "open_enrollment", "aggregator", "developer"]
    search_fields = ["name", "developer__username"]
    # the state moves only through the lifecycle (the actions), never by editing the row
    readonly_fields = [
        "allow_aggregation",
        "state",
        "state_reason",
        "state_changed_at",
        "current_artifact",
        "created_on",
        "last_modified",
    ]
    exclude = ["privacy_secret"]  # the key of the privacy noise: never shown
    inlines = [EnrollmentInline]
    actions = ["pause_aggregation", "resume_aggregation", "stop"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Experiment]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                _rounds=Max("aggregates__round_number"),
                _pending=Count(
                    "model_updates", filter=Q(model_updates__status=UpdateStatus.PENDING), distinct=True
                ),
                _clients=Count("enrollments", filter=Q(enrollments__revoked_at__isnull=True), distinct=True),
            )
        )

    def save_model(self, request: HttpRequest, obj: Experiment, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        lifecycle.finish_if_reached(obj)  # a finish_when already met ends it now, not at the next round

    @admin.display(description="rounds", ordering="_rounds")
    def rounds(self, experiment: Experiment) -> int:
        return experiment._rounds or 0

    @admin.display(description="pending updates", ordering="_pending")
    def pending_updates(self, experiment: Experiment) -> int:
        return experiment._pending

    @admin.display(description="clients", ordering="_clients")
    def client_count(self, experiment: Experiment) -> int:
        return experiment._clients

    def _set_state(self, request: HttpRequest, queryset: QuerySet[Experiment], state: str, done: str) -> None:
        changed, refused = 0, []
        for experiment in queryset:
            try:
                lifecycle.experiment_set_state(
                    experiment=experiment, state=state, user=request.user, reason="in the admin"
                )
                changed += 1
            except (Conflict, ValidationFailed) as error:
                refused.append(error.detail)
        self.message_user(request, f"{done} {changed} experiment(s).")
        for detail in refused:
            self.message_user(request, detail, level=messages.WARNING)

    @admin.action(description="Pause rounds")
    def pause_aggregation(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        self._set_state(request, queryset, ExperimentState.PAUSED, "Paused")

    @admin.action(description="Resume rounds")
    def resume_aggregation(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        self._set_state(request, queryset, ExperimentState.COLLECTING, "Resumed")

    @admin.action(description="Stop (for good: no more updates or rounds)")
    def stop(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        self._set_state(request, queryset, ExperimentState.STOPPED, "Stopped")


@admin.register(Client)
class ClientAdmin(admin.ModelAdmin):
    list_display = ["uuid", "experiment_count", "update_count", "last_seen", "revoked_at", "created_on"]
    list_filter = ["revoked_at", "last_seen"]
    search_fields = ["uuid"]
    readonly_fields = ["uuid", "revoked_at", "last_seen", "created_on"]
    exclude = ["secret_hash"]
    inlines = [EnrollmentInline]
    actions = ["revoke"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Client]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                _experiments=Count("enrollments", distinct=True),
                _updates=Count("model_updates", distinct=True),
            )
        )

    @admin.display(description="experiments", ordering="_experiments")
    def experiment_count(self, client: Client) -> int:
        return client._experiments

    @admin.display(description="updates", ordering="_updates")
    def update_count(self, client: Client) -> int:
        return client._updates

    @admin.action(description="Revoke the credential of the selected clients")
    def revoke(self, request: HttpRequest, queryset: QuerySet[Client]) -> None:
        clients = [c for c in queryset if not c.is_revoked]
        for client in clients:
            services.client_revoke(client=client, user=request.user, reason="revoked in the admin")
        self.message_user(request, f"Revoked {len(clients)} client(s).")


@admin.register(ModelUpdate)
class ModelUpdateAdmin(ServiceRecordAdmin):
    list_display = [
        "id",
        "experiment",
        "client_short",
        "status",
        "base_round",
        "aggregate",
        "num_examples",
        "size_bytes",
        "created_on",
    ]
    list_filter = ["status", "experiment"]
    search_fields = ["client__uuid", "content_id", "idempotency_key"]
    readonly_fields = [f.name for f in ModelUpdate._meta.fields if f.name != "aggregate_weight"] + ["weight"]

    @admin.display(description="client", ordering="client__uuid")
    def client_short(self, update: ModelUpdate) -> SafeString:
        return _short_uuid(update.client.uuid)

    @admin.display(description="aggregate weight")
    def weight(self, update: ModelUpdate) -> str:
        return _rounded(update.aggregate_weight)


@admin.register(UploadSession)
class UploadSessionAdmin(ServiceRecordAdmin):
    list_display = [
        "uuid",
        "experiment",
        "client_short",
        "state",
        "size_bytes",
        "part_bytes",
        "update",
        "created_on",
    ]
    list_filter = ["state", "experiment"]
    search_fields = ["uuid", "client__uuid", "idempotency_key"]
    readonly_fields = [f.name for f in UploadSession._meta.fields]

    @admin.display(description="client", ordering="client__uuid")
    def client_short(self, session: UploadSession) -> SafeString:
        return _short_uuid(session.client.uuid)


@admin.register(ModelAggregate)
class ModelAggregateAdmin(ServiceRecordAdmin):
    list_display = [
        "id",
        "experiment",
        "round_number",
        "update_count",
        "aggregator",
        "duration",
        "score",
        "created_on",
    ]
    list_filter = ["experiment", "aggregator"]
    readonly_fields = [
        f.name for f in ModelAggregate._meta.fields if f.name not in ("validation_score", "duration_seconds")
    ] + ["duration"]
    exclude = ["duration_seconds"]
    actions = ["publish"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelAggregate]:
        return super().get_queryset(request).annotate(_updates=Count("updates"))

    @admin.display(description="updates", ordering="_updates")
    def update_count(self, aggregate: ModelAggregate) -> int:
        return aggregate._updates

    @admin.display(description="aggregation time (s)", ordering="duration_seconds")
    def duration(self, aggregate: ModelAggregate) -> str:
        return _rounded(aggregate.duration_seconds, 3)

    @admin.display(description="validation score", ordering="validation_score")
    def score(self, aggregate: ModelAggregate) -> str:
        return _rounded(aggregate.validation_score)

    @admin.action(description="Publish as the next version (round number)")
    def publish(self, request: HttpRequest, queryset: QuerySet[ModelAggregate]) -> None:
        for aggregate in queryset:
            version = f"round-{aggregate.round_number}"
            try:
                services.aggregate_publish(aggregate=aggregate, version=version, user=request.user)
            except DomainError as error:
                self.message_user(request, f"{aggregate}: {error.detail}", level=messages.ERROR)
            else:
                self.message_user(request, f"Published {aggregate} as version {version}.")


@admin.register(ModelArtifact)
class ModelArtifactAdmin(ServiceRecordAdmin):
    list_display = ["id", "experiment", "version", "aggregate", "size_bytes", "created_on"]
    list_filter = ["experiment"]
    readonly_fields = [f.name for f in ModelArtifact._meta.fields]


@admin.register(Evaluation)
class EvaluationAdmin(ServiceRecordAdmin):
    list_display = ["id", "aggregate", "source", "reporter", "metrics_shown", "num_examples", "created_on"]
    list_filter = ["source", "aggregate__experiment"]
    list_select_related = ["client", "user", "aggregate"]
    readonly_fields = [f.name for f in Evaluation._meta.fields]

    @admin.display(description="by", ordering="client__uuid")
    def reporter(self, evaluation: Evaluation) -> SafeString | str:
        if evaluation.client_id is not None:
            return _short_uuid(evaluation.client.uuid)
        return str(evaluation.user or "—")

    @admin.display(description="metrics")
    def metrics_shown(self, evaluation: Evaluation) -> str:
        return (
            ", ".join(f"{name} {_rounded(value)}" for name, value in sorted(evaluation.metrics.items()))
            or "—"
        )


@admin.register(Enrollment)
class EnrollmentAdmin(admin.ModelAdmin):
    list_display = ["experiment", "client", "via", "created_on", "revoked_at"]
    list_filter = ["via", "experiment", "revoked_at"]
    search_fields = ["client__uuid"]
    readonly_fields = ["experiment", "client", "via", "created_on", "revoked_at"]


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin):
    list_display = ["id", "experiment", "created_by", "uses", "max_uses", "expires_at", "created_on"]
    list_filter = ["experiment"]
    exclude = ["token_hash"]
    readonly_fields = ["experiment", "created_by", "uses", "created_on"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a token is shown once, so it is issued through the API, never typed in


@admin.register(DeveloperToken)
class DeveloperTokenAdmin(admin.ModelAdmin):
    """Developers' API tokens: seen and revoked (deleted) here; made only by logging in."""

    list_display = ["id", "user", "name", "created_at", "expires_at", "last_used_at"]
    list_filter = ["user"]
    search_fields = ["user__username", "name"]
    exclude = ["digest"]
    readonly_fields = ["user", "name", "created_at", "expires_at", "last_used_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a token is shown once, so it is made by /api-token-auth/, never typed in


@admin.register(RoundSelection)
class RoundSelectionAdmin(ServiceRecordAdmin):
    """Each sampled round's draw, as recorded: read only, since rounds count on it."""

    list_display = ["experiment", "round_number", "mode", "seed", "enrolled", "created_on"]
    list_filter = ["experiment", "mode"]
    readonly_fields = [f.name for f in RoundSelection._meta.fields]


@admin.register(RoundLease)
class RoundLeaseAdmin(ServiceRecordAdmin):
    list_display = ["experiment", "round_number", "worker", "expires"]
    fields = ["experiment", "token", "worker", "round_number", "expires"]
    readonly_fields = fields

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, lease: RoundLease) -> str:
        """The lease keeps seconds since the epoch (the round engine's clock); people read a time."""
        return date_format(datetime.fromtimestamp(lease.expires_at, tz=UTC), "DATETIME_FORMAT")


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["created_on", "kind", "experiment", "client", "user", "details"]
    list_filter = ["kind", "experiment"]
    search_fields = ["client__uuid"]
    fields = ["created_on", "kind", "experiment", "client", "user", "details"]
    readonly_fields = fields

    @admin.display(description="detail")
    def details(self, event: Event) -> SafeString | str:
        """The detail as one "name: value" line per entry, not as raw JSON."""
        detail = event.detail if isinstance(event.detail, dict) else {"detail": event.detail}
        if not detail:
            return "—"
        shown = ((name, _rounded(v) if isinstance(v, float) else v) for name, v in sorted(detail.items()))
        return format_html_join("", '<span class="event-detail">{}: {}</span><br>', shown)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False
