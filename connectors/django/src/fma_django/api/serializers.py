"""Shapes of the v1 resources (field names of the original FMA) and of request bodies.

Serializers only shape and check types; the rules are in ``fma_django.services``. The original's
``federated_model`` is our Experiment; ``data``, ``result`` and ``values`` are links to the
weights as safetensors rather than files of JSON floats.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from fma_core.aggregators import available
from fma_django import ingestion, privacy, selectors
from fma_django.api.parsers import NestedTooDeeply, check_depth
from fma_django.columns import UUIDText
from fma_django.lifecycle import REQUESTABLE
from fma_django.limits import (
    IDEMPOTENCY_KEY_PATTERN,
    IDEMPOTENCY_KEY_RULE,
    MAX_BIGINT,
    MAX_INT,
    MAX_TOKEN_LIFETIME_SECONDS,
    whole_number_range,
)
from fma_django.models import (
    EnrollmentToken,
    Evaluation,
    Experiment,
    ModelAggregate,
    ModelArtifact,
    ModelUpdate,
    UpdateKind,
    UploadSession,
    UploadState,
)


def whole_number(*, low: int = 1, high: int = MAX_BIGINT, **kwargs: Any) -> serializers.IntegerField:
    """An integer field whose refusal names its range (default: an id); booleans, ``1e30`` and
    ``1.5`` are refused, and nothing past a database column's bounds reaches the database."""
    message = whole_number_range(low, high)
    return serializers.IntegerField(
        min_value=low,
        max_value=high,
        error_messages={"invalid": message, "min_value": message, "max_value": message},
        **kwargs,
    )


def idempotency_key_field(**kwargs: Any) -> serializers.RegexField:
    """An optional idempotency key ("" or absent: none), refused with the rule when it breaks it."""
    return serializers.RegexField(
        rf"^{IDEMPOTENCY_KEY_PATTERN}$",  # ECMA-compatible for the OpenAPI schema; whitespace is trimmed first
        required=False,
        allow_blank=True,
        default="",
        error_messages={"invalid": f"an idempotency key is {IDEMPOTENCY_KEY_RULE}"},
        **kwargs,
    )


class JSONField(serializers.JSONField):
    """DRF's JSONField with the API's nesting bound (``api.parsers``): form and multipart bodies
    carry JSON as text, which this field parses itself, not the API's JSON parser."""

    def to_internal_value(self, data: Any) -> Any:
        try:
            return check_depth(super().to_internal_value(data))
        except (RecursionError, NestedTooDeeply):
            raise serializers.ValidationError(str(NestedTooDeeply())) from None


def _absolute(context: dict[str, Any], name: str, pk: int) -> str:
    path = reverse(f"fma-api:{name}", kwargs={"pk": pk})
    request = context.get("request")
    return request.build_absolute_uri(path) if request is not None else path


class ExperimentSerializer(serializers.ModelSerializer):
    """``/api/v1/models/``: the original's FederatedModel fields, plus FMA's own settings."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.JSONField: JSONField,
    }

    # Checked by the services against the registry as it is then (built-ins and installed plugins), which
    # names the available ones in its refusal; a list of choices fixed at import would miss a plugin.
    aggregator = serializers.CharField(
        max_length=64,
        default="fedavg",
        help_text=f"an algorithm's name: {', '.join(available())}, or an installed plugin's",
    )
    requirement = serializers.ChoiceField(
        choices=["", "all_clients", "require_x_updates"], required=False, allow_blank=True
    )
    developer = whole_number(
        source="developer_id", required=False, help_text="defaults to you; only staff may name another user"
    )
    clients = serializers.SerializerMethodField()
    privacy_spent = serializers.SerializerMethodField(
        help_text="the privacy ledger: ε spent after the newest round, δ, the budget, the rounds the "
        "most-charged client went into, the next round's clip bound, whether the budget stopped the rounds; "
        "null without privacy"
    )
    current_artifact = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    initial_model = JSONField(
        write_only=True,
        required=False,
        help_text="the original's JSON weights: a list of layers (nested lists)",
    )

    class Meta:
        model = Experiment
        fields = [
            "id",
            "name",
            "developer",
            "aggregator",
            "aggregator_params",
            "requirement",
            "requirement_args",
            "round_policy",
            "furthest_base_agg",
            "allow_aggregation",
            "tensor_spec",
            "update_schema",
            "metrics_schema",
            "client_agg_results_schema",
            "open_enrollment",
            "legacy_mode",
            "max_update_bytes",
            "update_kind",
            "update_norm",
            "privacy",
            "privacy_spent",
            "client_sampling",
            "finish_when",
            "state",
            "state_reason",
            "state_changed_at",
            "asynchronous",
            "secure_aggregation",
            "evaluation",
            "current_artifact",
            "clients",
            "created_on",
            "last_modified",
            "initial_model",
        ]
        # the state moves through ``state/`` (or the v1 allow_aggregation switch), never by writing it
        read_only_fields = ["id", "created_on", "last_modified", "state", "state_reason", "state_changed_at"]

    @extend_schema_field(
        {
            "type": ["object", "null"],
            "properties": {
                "epsilon": {"type": "number"},
                "delta": {"type": "number"},
                "budget_epsilon": {"type": "number"},
                "charged_rounds": {"type": "integer"},
                "clip_bound": {"type": "number"},
                "budget_spent": {"type": "boolean"},
            },
        }
    )
    def get_privacy_spent(self, experiment: Experiment) -> dict[str, Any] | None:
        return privacy.ledger(experiment)

    def get_clients(self, experiment: Experiment) -> list[str]:
        return [
            str(u)
            for u in experiment.enrollments.filter(revoked_at__isnull=True).values_list(
                "client__uuid", flat=True
            )
        ]


class StateChangeSerializer(serializers.Serializer):
    """``models/{id}/state/``: pause, resume or stop an experiment (``fma_django.lifecycle``)."""

    state = serializers.ChoiceField(
        choices=list(REQUESTABLE),
        help_text="collecting (resume), paused, or stopped (for good); finished and budget_spent are the service's",
    )
    reason = serializers.CharField(max_length=400, required=False, allow_blank=True, default="")


class ParticipationSerializer(serializers.Serializer):
    """``models/{id}/participation/``: whether the calling client takes part in the current round."""

    selected = serializers.BooleanField(help_text="false: the round's draw did not take this client")
    round = serializers.IntegerField(help_text="the current round (the next aggregate's round number)")
    retry_after = serializers.IntegerField(
        allow_null=True, help_text="when not selected: seconds until asking again may change the answer"
    )


class RegisterClientSerializer(serializers.Serializer):
    enrollment_token = serializers.CharField(required=False, allow_blank=True)


class RegisteredClientSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    credential = serializers.CharField(
        required=False, help_text="shown once: send it as 'Authorization: Client <credential>'"
    )


class EnrollmentTokenRequestSerializer(serializers.Serializer):
    expires_in_seconds = whole_number(high=MAX_TOKEN_LIFETIME_SECONDS, required=False)
    max_uses = whole_number(high=MAX_INT, required=False)


class EnrollmentTokenSerializer(serializers.ModelSerializer):
    """An enrollment token as listed: never the token itself, which is shown once when issued."""

    created_by = serializers.CharField(source="created_by.get_username", read_only=True)
    active = serializers.SerializerMethodField(help_text="may still enroll clients")

    class Meta:
        model = EnrollmentToken
        fields = ["id", "created_on", "created_by", "expires_at", "max_uses", "uses", "revoked_at", "active"]
        read_only_fields = fields

    def get_active(self, token: EnrollmentToken) -> bool:
        return (
            token.revoked_at is None
            and (token.expires_at is None or token.expires_at > timezone.now())
            and (token.max_uses is None or token.uses < token.max_uses)
        )


class IssuedEnrollmentTokenSerializer(EnrollmentTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="shown only now: hand it to a data holder")

    class Meta(EnrollmentTokenSerializer.Meta):
        fields = [*EnrollmentTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class ClientRefSerializer(serializers.Serializer):
    client = serializers.UUIDField()


class CredentialSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    credential = serializers.CharField()


class ModelUpdateSerializer(serializers.ModelSerializer):
    federated_model = serializers.IntegerField(source="experiment_id", read_only=True)
    client = serializers.UUIDField(source="client.uuid", read_only=True)
    applied_aggregate = serializers.IntegerField(source="aggregate_id", read_only=True, allow_null=True)
    base_aggregate = serializers.IntegerField(source="base_aggregate_id", read_only=True, allow_null=True)
    data = serializers.SerializerMethodField(help_text="URL of the update's weights (safetensors)")

    class Meta:
        model = ModelUpdate
        fields = [
            "id",
            "client",
            "federated_model",
            "data",
            "status",
            "status_reason",
            "created_on",
            "base_aggregate",
            "base_round",
            "applied_aggregate",
            "aggregate_weight",
            "num_examples",
            "metrics",
            "idempotency_key",
            "content_id",
            "size_bytes",
            "weights_removed_on",
        ]
        read_only_fields = fields

    def get_data(self, update: ModelUpdate) -> str:
        return _absolute(self.context, "model_update-weights", update.pk)


class ModelUpdateCreateSerializer(serializers.Serializer):
    """The v1 JSON submission (what fma-connect sends), with FMA's optional extras."""

    federated_model = whole_number()
    data = JSONField(help_text="a list of layers, each a (nested) list of numbers")
    base_aggregate = whole_number(required=False, allow_null=True)
    num_examples = whole_number(required=False, default=1)
    metrics = JSONField(required=False, allow_null=True, default=None)
    idempotency_key = idempotency_key_field()


class UploadStartSerializer(serializers.Serializer):
    """Starting an upload session: the update's metadata and what its bytes will be."""

    size = whole_number(help_text="bytes of the safetensors file")
    sha256 = serializers.RegexField(
        r"^[0-9a-fA-F]{64}$",
        required=False,
        default=None,
        help_text="SHA-256 of the whole file, in hex; or given when completing, so the file is read once",
    )
    num_examples = whole_number(required=False, default=1)
    base_aggregate = whole_number(required=False, allow_null=True, default=None)
    metrics = JSONField(required=False, allow_null=True, default=None)
    idempotency_key = idempotency_key_field(help_text="or header Idempotency-Key")
    update_kind = serializers.ChoiceField(
        choices=UpdateKind.choices,
        default=UpdateKind.WEIGHTS,
        help_text="what the bytes are: the trained weights, or (experiments that take deltas) the change",
    )


class UploadCompleteSerializer(serializers.Serializer):
    """Completing an upload session: the file's hash, if it was not declared at the start."""

    sha256 = serializers.RegexField(
        r"^[0-9a-fA-F]{64}$",
        required=False,
        default=None,
        help_text="SHA-256 of the whole file, in hex: required if the upload was started without it",
    )


class UploadedPartSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    size = serializers.IntegerField()
    etag = serializers.CharField()


class UploadTargetSerializer(serializers.Serializer):
    number = serializers.IntegerField(help_text="part number, from 1")
    offset = serializers.IntegerField(help_text="where the part starts in the file")
    size = serializers.IntegerField(help_text="exact bytes of the part")
    method = serializers.CharField()
    url = serializers.URLField(help_text="the API's part endpoint, or a presigned storage URL")
    headers = serializers.DictField(child=serializers.CharField(), help_text="headers to send with the part")
    expires_at = serializers.DateTimeField(required=False, help_text="presigned URLs only")


class UploadSessionSerializer(serializers.ModelSerializer):
    """An upload session: its parts' targets and the parts received while open, its update once completed.

    ``checking``: completed by its client, checked by a runner; ``rejected``: ``reason`` and
    ``reason_code`` are the refusal's ``detail`` and ``code``.

    Credentials go only to the service's own URLs, never to a presigned storage URL.
    """

    id = serializers.UUIDField(source="uuid", read_only=True)
    federated_model = serializers.IntegerField(source="experiment_id", read_only=True)
    size = serializers.IntegerField(source="size_bytes", read_only=True)
    part_size = serializers.IntegerField(source="part_bytes", read_only=True)
    part_count = serializers.IntegerField(read_only=True)
    base_aggregate = serializers.IntegerField(source="base_aggregate_id", read_only=True, allow_null=True)
    expires_at = serializers.SerializerMethodField(help_text="when the sweep aborts it if still open")
    parts = serializers.SerializerMethodField(help_text="parts received so far (open sessions)")
    targets = serializers.SerializerMethodField(help_text="where to send each part (open sessions)")
    update = ModelUpdateSerializer(read_only=True, allow_null=True)

    class Meta:
        model = UploadSession
        fields = [
            "id",
            "federated_model",
            "state",
            "reason",
            "reason_code",
            "size",
            "sha256",
            "part_size",
            "part_count",
            "num_examples",
            "base_aggregate",
            "metrics",
            "idempotency_key",
            "created_on",
            "expires_at",
            "parts",
            "targets",
            "update",
        ]
        read_only_fields = fields

    def get_expires_at(self, session: UploadSession) -> Any:
        return serializers.DateTimeField().to_representation(ingestion.upload_expires_at(session))

    @extend_schema_field(UploadedPartSerializer(many=True))
    def get_parts(self, session: UploadSession) -> list[dict[str, Any]]:
        return UploadedPartSerializer(ingestion.upload_parts_received(session), many=True).data

    @extend_schema_field(UploadTargetSerializer(many=True))
    def get_targets(self, session: UploadSession) -> list[dict[str, Any]]:
        if session.state != UploadState.OPEN:
            return []

        def api_part_url(number: int) -> str:
            path = reverse(
                "fma-api:upload-part",
                kwargs={"experiment_pk": session.experiment_id, "upload_id": session.uuid, "number": number},
            )
            request = self.context.get("request")
            return request.build_absolute_uri(path) if request is not None else path

        return UploadTargetSerializer(
            ingestion.upload_targets(session, api_part_url=api_part_url), many=True
        ).data


class ModelAggregateSerializer(serializers.ModelSerializer):
    federated_model = serializers.IntegerField(source="experiment_id", read_only=True)
    parent = serializers.IntegerField(source="parent_id", read_only=True, allow_null=True)
    result = serializers.SerializerMethodField(help_text="URL of the aggregate's weights (safetensors)")
    update_kind = serializers.CharField(
        source="experiment.update_kind",
        read_only=True,
        help_text="what clients training from this model push: 'weights', or 'delta' (trained - this model)",
    )

    class Meta:
        model = ModelAggregate
        fields = [
            "id",
            "federated_model",
            "result",
            "validation_score",
            "created_on",
            "parent",
            "round_number",
            "aggregator",
            "aggregator_params",
            "content_id",
            "size_bytes",
            "duration_seconds",
            "update_kind",
            "state_content_id",
        ]
        read_only_fields = [f for f in fields if f != "validation_score"]

    def get_result(self, aggregate: ModelAggregate) -> str:
        return _absolute(self.context, "model_aggregate-weights", aggregate.pk)


class LegacyModelSerializer(serializers.Serializer):
    """``get_latest_model/``: the original's inlined JSON weights, from the newest aggregate or the artifact."""

    values = serializers.JSONField(help_text="a list of layers, each a (nested) list of numbers")
    aggregate = serializers.IntegerField(allow_null=True, help_text="null when the values are the artifact's")


class PublishSerializer(serializers.Serializer):
    version = serializers.CharField(max_length=255)


class ModelArtifactSerializer(serializers.ModelSerializer):
    federated_model = serializers.IntegerField(source="experiment_id", read_only=True)
    aggregate = serializers.IntegerField(source="aggregate_id", read_only=True, allow_null=True)
    values = serializers.SerializerMethodField(help_text="URL of the artifact's weights (safetensors)")
    update_kind = serializers.CharField(
        source="experiment.update_kind",
        read_only=True,
        help_text="what clients training from this model push: 'weights', or 'delta' (trained - this model)",
    )

    class Meta:
        model = ModelArtifact
        fields = [
            "id",
            "values",
            "version",
            "created_on",
            "federated_model",
            "aggregate",
            "content_id",
            "size_bytes",
            "update_kind",
        ]
        read_only_fields = fields

    def get_values(self, artifact: ModelArtifact) -> str:
        return _absolute(self.context, "model_artifact-weights", artifact.pk)


class ClientAggregateScoreSerializer(serializers.ModelSerializer):
    """A client's evaluation as the v1 ``client_aggregate_scores/`` shows it: ``validation_results`` as
    the client sent them, or (an evaluation reported to ``evaluations/``) its metrics and examples."""

    client = serializers.UUIDField(source="client.uuid", read_only=True)
    aggregate = serializers.IntegerField(source="aggregate_id", read_only=True)
    validation_results = serializers.SerializerMethodField()

    class Meta:
        model = Evaluation
        fields = ["id", "client", "validation_results", "created_on", "aggregate"]
        read_only_fields = fields

    @extend_schema_field(serializers.JSONField())
    def get_validation_results(self, evaluation: Evaluation) -> Any:
        if evaluation.validation_results is not None:
            return evaluation.validation_results
        return {**evaluation.metrics, "num_examples": evaluation.num_examples}


class ClientAggregateScoreCreateSerializer(serializers.Serializer):
    aggregate = whole_number()
    validation_results = JSONField()
    client = serializers.UUIDField(required=False, allow_null=True, help_text="must be the caller if given")
    federated_model = whole_number(required=False, help_text="ignored, as in the original")


class EvaluationSerializer(serializers.ModelSerializer):
    """An evaluation of an aggregate on held-out data (``models/{id}/evaluations/``)."""

    federated_model = serializers.IntegerField(source="aggregate.experiment_id", read_only=True)
    aggregate = serializers.IntegerField(source="aggregate_id", read_only=True)
    round_number = serializers.IntegerField(source="aggregate.round_number", read_only=True)
    client = serializers.UUIDField(
        source="client.uuid", read_only=True, allow_null=True, help_text="null for the developer's"
    )
    metrics = serializers.DictField(child=serializers.FloatField(), read_only=True)

    class Meta:
        model = Evaluation
        fields = [
            "id",
            "federated_model",
            "aggregate",
            "round_number",
            "source",
            "client",
            "metrics",
            "num_examples",
            "created_on",
        ]
        read_only_fields = fields


class EvaluationCreateSerializer(serializers.Serializer):
    """Reporting an evaluation: the aggregate measured, the declared metrics, the examples measured on."""

    aggregate = whole_number(help_text="one of this experiment's aggregates")
    metrics = JSONField(
        help_text='declared metric names to finite numbers, e.g. {"accuracy": 0.91, "loss": 0.3}'
    )
    num_examples = whole_number(help_text="the held-out examples the metrics were measured on: their weight")


class MetricSummarySerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="clients that reported this metric")
    examples = serializers.IntegerField(help_text="their examples added up: the weights' total")
    mean = serializers.FloatField()
    weighted_mean = serializers.FloatField(help_text="weighted by each client's examples")
    min = serializers.FloatField()
    max = serializers.FloatField()


class AggregateMetricsSerializer(serializers.Serializer):
    """One aggregate's combined client metrics (``fma_django.selectors.aggregate_metrics``)."""

    aggregate = serializers.IntegerField(source="aggregate.pk")
    round_number = serializers.IntegerField(source="aggregate.round_number")
    created_on = serializers.DateTimeField(source="aggregate.created_on")
    training = serializers.DictField(
        child=MetricSummarySerializer(), help_text="metrics sent with the updates the round consumed"
    )
    evaluation = serializers.DictField(
        child=MetricSummarySerializer(),
        help_text="its evaluations on held-out data (clients' and the developer's)",
    )


class EvaluationSummarySerializer(serializers.Serializer):
    """An aggregate's evaluations combined (``fma_django.selectors.evaluation_summary``)."""

    reports = serializers.IntegerField(help_text="evaluations of this aggregate")
    examples = serializers.IntegerField(help_text="the held-out examples they measured, added up")
    sources = serializers.DictField(
        child=serializers.IntegerField(), help_text="evaluations by source: client, developer"
    )
    metrics = serializers.DictField(
        child=MetricSummarySerializer(), help_text="per metric: weighted_mean is the combined figure"
    )
    goals = serializers.DictField(
        child=serializers.ChoiceField(choices=["max", "min"]), help_text="each declared metric's goal"
    )


class AggregateInputSerializer(serializers.Serializer):
    """One update that went into an aggregate, as the round used and measured it (``report["updates"]``)."""

    id = serializers.IntegerField()
    client = serializers.UUIDField(help_text="the client that sent it")
    weight = serializers.FloatField(
        allow_null=True, help_text="its share of the aggregate (linear algorithms)"
    )
    norm = serializers.FloatField(
        allow_null=True, help_text="length of its step from the round's current model (null: not measured)"
    )
    cosine = serializers.FloatField(
        allow_null=True, help_text="cosine between that step and the aggregate's (null: not measured)"
    )
    distance = serializers.FloatField(allow_null=True, help_text="Euclidean distance to the aggregate")
    outlier = serializers.BooleanField(
        allow_null=True, help_text="distance above the round's median + 3 × 1.4826 × MAD of distances"
    )


class ModelAggregateDetailSerializer(ModelAggregateSerializer):
    """One aggregate with the exact updates that went in and each one's share, and its evaluations
    on held-out data combined."""

    updates = serializers.SerializerMethodField()
    evaluation = serializers.SerializerMethodField()

    class Meta(ModelAggregateSerializer.Meta):
        fields = [*ModelAggregateSerializer.Meta.fields, "updates", "report", "evaluation"]
        read_only_fields = [
            *ModelAggregateSerializer.Meta.read_only_fields,
            "updates",
            "report",
            "evaluation",
        ]

    @extend_schema_field(EvaluationSummarySerializer)
    def get_evaluation(self, aggregate: ModelAggregate) -> dict[str, Any]:
        return EvaluationSummarySerializer(selectors.evaluation_summary(aggregate)).data

    @extend_schema_field(AggregateInputSerializer(many=True))
    def get_updates(self, aggregate: ModelAggregate) -> list[dict[str, Any]]:
        """Each input's share and, as the round measured it (``report["updates"]``), its norm, its cosine
        and distance to the aggregate, and whether it was flagged an outlier (null: not measured)."""
        measured = ((aggregate.report or {}).get("updates") or {}).get("per_update") or {}
        return [
            {
                "id": pk,
                "client": client,
                "weight": weight,
                **{
                    name: measured.get(str(pk), {}).get(name)
                    for name in ("norm", "cosine", "distance", "outlier")
                },
            }
            for pk, client, weight in aggregate.updates.order_by("id").values_list(
                "id", UUIDText("client__uuid"), "aggregate_weight"
            )
        ]
