"""The v1 endpoints: each view picks its permission, scopes rows through the selectors and calls a service."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from fma_core.weights import load, to_legacy_json
from fma_django import evaluations, ingestion, lifecycle, sampling, selectors, services
from fma_django.api import serializers as s
from fma_django.api.filters import (
    ClientAggregateScoreFilter,
    ExperimentFilter,
    ModelAggregateFilter,
    ModelUpdateFilter,
)
from fma_django.api.permissions import IsClient, IsDeveloper, IsDeveloperOrClient
from fma_django.api.schema import errors, or_empty
from fma_django.api.throttling import RegisterRateThrottle
from fma_django.api.transfer import (
    BodyStream,
    Prefetched,
    SafetensorsRenderer,
    int_option,
    json_option,
    upload_option,
    weights_response,
)
from fma_django.errors import Forbidden, Gone, NotFound, TooLarge, ValidationFailed
from fma_django.models import Experiment, ModelAggregate
from fma_django.selectors import ClientPrincipal
from fma_django.storage import weight_store

DOWNLOAD_RENDERERS = [JSONRenderer, SafetensorsRenderer]
WEIGHTS_RESPONSE = {
    (200, "application/octet-stream"): OpenApiTypes.BINARY,
    (206, "application/octet-stream"): OpenApiResponse(
        OpenApiTypes.BINARY, description="the Range asked for"
    ),
    302: OpenApiResponse(description="the store's presigned URL (Location), where the store has them"),
    304: OpenApiResponse(description="If-None-Match named the weights' ETag (their SHA-256)"),
    416: OpenApiResponse(description="the Range is past the end (Content-Range gives the size)"),
}
WEIGHTS_HEADERS = [
    OpenApiParameter(
        "ETag",
        str,
        OpenApiParameter.HEADER,
        response=[200, 206, 304],
        required=True,
        description="the SHA-256",
    ),
    OpenApiParameter("Content-Range", str, OpenApiParameter.HEADER, response=[206, 416], required=True),
    OpenApiParameter("Location", str, OpenApiParameter.HEADER, response=[302], required=True),
]


def _visible(queryset: Any, pk: Any, what: str) -> Any:
    """The row with this id if the caller may see it; 404 otherwise (never revealing that it exists)."""
    try:
        return queryset.get(pk=int(pk))
    except (queryset.model.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"no {what} {pk} that you can access") from None


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


DRY_RUN = OpenApiParameter(
    "dry_run",
    bool,
    description="true: make every check the change would pass, store nothing (what `fma plan` asks)",
)
DRY_RUN_CHOICES = {"true": True, "1": True, "false": False, "0": False, "": False}


def _dry_run(request: Request) -> bool:
    value = request.query_params.get("dry_run", "")
    if value.lower() not in DRY_RUN_CHOICES:
        raise ValidationFailed(f"dry_run must be true or false, not {value[:100]!r}")
    return DRY_RUN_CHOICES[value.lower()]


@extend_schema_view(
    create=extend_schema(
        parameters=[DRY_RUN],
        responses={
            201: s.ExperimentSerializer,
            204: OpenApiResponse(description="dry_run: every check passed; the experiment would be created"),
            **errors(409),
        },
    ),
    update=extend_schema(
        parameters=[DRY_RUN],
        responses={
            200: OpenApiResponse(
                s.ExperimentSerializer, description="the experiment (dry_run: as it would be)"
            ),
            **errors(409),
        },
    ),
    partial_update=extend_schema(
        parameters=[DRY_RUN],
        responses={
            200: OpenApiResponse(
                s.ExperimentSerializer, description="the experiment (dry_run: as it would be)"
            ),
            **errors(409),
        },
    ),
)
class ExperimentViewSet(viewsets.ModelViewSet):
    """Experiments (the original's federated models). Developers manage their own; clients read theirs."""

    serializer_class = s.ExperimentSerializer
    filterset_class = ExperimentFilter
    ordering_fields = ["created_on", "name", "id"]
    ordering = ["-created_on"]
    client_actions = {"get_latest_aggregate", "get_latest_model", "get_current_artifact", "latest_weights"}

    def get_permissions(self) -> list[BasePermission]:
        if self.action == "register_client":
            return [AllowAny()]
        if self.action in self.client_actions:
            return [IsDeveloperOrClient()]
        if self.action in {"upload_update", "participation"}:
            return [IsClient()]
        return [IsDeveloper()]

    def get_throttles(self) -> list[BaseThrottle]:
        return [RegisterRateThrottle()] if self.action == "register_client" else super().get_throttles()

    def get_queryset(self) -> Any:
        if self.action == "register_client":
            return Experiment.objects.all()
        return selectors.experiments_visible(self.request.user).select_related("current_artifact")

    def _developer(self, developer_id: int | None) -> Any:
        user = self.request.user
        if developer_id is None or developer_id == user.pk:
            return user
        if not user.is_staff:
            raise Forbidden("you cannot create or move experiments for another user")
        developer = get_user_model().objects.filter(pk=developer_id, is_active=True).first()
        if developer is None:
            raise ValidationFailed(f"developer: no active user {developer_id}")
        return developer

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        developer = self._developer(data.pop("developer_id", None))
        dry_run = _dry_run(request)
        experiment = services.experiment_create(developer=developer, dry_run=dry_run, **data)
        if dry_run:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(self.get_serializer(experiment).data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        experiment = self.get_object()
        serializer = self.get_serializer(experiment, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if "initial_model" in data:
            raise ValidationFailed(
                "initial_model is set when the experiment is created; publish an aggregate instead"
            )
        if "developer_id" in data:
            experiment.developer = self._developer(data.pop("developer_id"))
        services.experiment_update(
            experiment=experiment, user=request.user, dry_run=_dry_run(request), **data
        )
        return Response(self.get_serializer(experiment).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.experiment_delete(experiment=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=s.RegisterClientSerializer, responses=s.RegisteredClientSerializer)
    @action(detail=True, methods=["post"])
    def register_client(self, request: Request, pk: str) -> Response:
        """Enroll the caller: with an enrollment token, openly if allowed, or the legacy anonymous way."""
        experiment = self.get_object()
        body = s.RegisterClientSerializer(data=request.data if isinstance(request.data, dict) else {})
        body.is_valid(raise_exception=True)
        token = body.validated_data.get("enrollment_token") or request.META.get("HTTP_X_FMA_ENROLLMENT_TOKEN")
        principal = request.user
        if isinstance(principal, ClientPrincipal):
            client, legacy = principal.client, principal.legacy
        else:  # anonymous, or a developer acting as a new client (as in the original)
            client, legacy = None, experiment.legacy_mode and not token
        client, credential = services.client_register(
            experiment=experiment, client=client, enrollment_token=token, legacy=legacy
        )
        body = {"uuid": str(client.uuid)}
        if credential:
            body["credential"] = credential
        return Response(body)

    @extend_schema(
        methods=["post"],
        request=s.EnrollmentTokenRequestSerializer,
        responses={201: s.IssuedEnrollmentTokenSerializer},
    )
    @extend_schema(methods=["get"], responses=s.EnrollmentTokenSerializer(many=True))
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def enrollment_tokens(self, request: Request, pk: str) -> Response:
        """POST: issue an enrollment token (shown once). GET: the experiment's tokens, newest first."""
        experiment = self.get_object()
        if request.method == "GET":
            tokens = experiment.enrollment_tokens.select_related("created_by")
            return Response(s.EnrollmentTokenSerializer(tokens, many=True).data)
        body = s.EnrollmentTokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        seconds = body.validated_data.get("expires_in_seconds")
        row, token = services.enrollment_token_issue(
            experiment=experiment,
            user=request.user,
            expires_in=timedelta(seconds=seconds) if seconds else None,
            max_uses=body.validated_data.get("max_uses"),
        )
        row.token = token
        return Response(s.IssuedEnrollmentTokenSerializer(row).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: s.EnrollmentTokenSerializer})
    @action(detail=True, methods=["delete"], url_path=r"enrollment_tokens/(?P<token_id>[0-9]+)")
    def revoke_enrollment_token(self, request: Request, pk: str, token_id: str) -> Response:
        """Revoke an enrollment token: nobody else enrolls with it (enrolled clients stay)."""
        experiment = self.get_object()
        token = experiment.enrollment_tokens.filter(pk=int(token_id)).first()
        if token is None:
            raise NotFound(f"experiment {experiment.pk} has no enrollment token {token_id}")
        token = services.enrollment_token_revoke(token=token, user=request.user)
        return Response(s.EnrollmentTokenSerializer(token).data)

    @extend_schema(request=s.ClientRefSerializer, responses={204: None})
    @action(detail=True, methods=["post"])
    def revoke_client(self, request: Request, pk: str) -> Response:
        """Shut one client out of this experiment."""
        experiment = self.get_object()
        body = s.ClientRefSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        client = selectors.enrolled_client(experiment, body.validated_data["client"])
        if client is None:
            raise NotFound("this client is not enrolled in the experiment")
        services.enrollment_revoke(experiment=experiment, client=client, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=s.StateChangeSerializer, responses={200: s.ExperimentSerializer, **errors(409)})
    @action(detail=True, methods=["post"])
    def state(self, request: Request, pk: str) -> Response:
        """Pause, resume (``collecting``) or stop the experiment; 409 if its state does not allow it
        (stopped and budget-spent experiments stay so; a finished one resumes once ``finish_when`` no
        longer holds)."""
        experiment = self.get_object()
        body = s.StateChangeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        lifecycle.experiment_set_state(experiment=experiment, user=request.user, **body.validated_data)
        return Response(self.get_serializer(experiment).data)

    @extend_schema(responses=or_empty(s.ModelAggregateSerializer, "ModelAggregateOrEmpty"))
    @action(detail=True, methods=["get"])
    def get_latest_aggregate(self, request: Request, pk: str) -> Response:
        """The newest aggregate's metadata (``result`` links to its weights), or ``{}``."""
        aggregate = selectors.latest_aggregate(self.get_object())
        if aggregate is None:
            return Response({})
        return Response(s.ModelAggregateSerializer(aggregate, context=self.get_serializer_context()).data)

    @extend_schema(
        responses=s.ParticipationSerializer,
        parameters=[
            OpenApiParameter(
                "Retry-After", int, OpenApiParameter.HEADER, response=[200], description="when not selected"
            )
        ],
    )
    @action(detail=True, methods=["get"])
    def participation(self, request: Request, pk: str) -> Response:
        """Whether this client takes part in the current round (always, unless the experiment samples
        clients); if not, ``retry_after`` seconds, also in the Retry-After header. Ask before training."""
        answer = sampling.participation(self.get_object(), request.user.client)
        headers = {"Retry-After": str(answer.retry_after)} if answer.retry_after is not None else None
        return Response(s.ParticipationSerializer(answer).data, headers=headers)

    @extend_schema(responses=s.AggregateMetricsSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def metrics(self, request: Request, pk: str) -> Response:
        """Per aggregate, oldest first: the clients' reported metrics combined (count, mean, weighted mean, min, max)."""
        experiment = self.get_object()
        return Response(s.AggregateMetricsSerializer(selectors.aggregate_metrics(experiment), many=True).data)

    @extend_schema(responses=or_empty(s.ModelArtifactSerializer, "ModelArtifactOrEmpty"))
    @action(detail=True, methods=["get"])
    def get_current_artifact(self, request: Request, pk: str) -> Response:
        """The published artifact (``values`` links to its weights), or ``{}``."""
        artifact = self.get_object().current_artifact
        if artifact is None:
            return Response({})
        return Response(s.ModelArtifactSerializer(artifact, context=self.get_serializer_context()).data)

    @extend_schema(responses={200: or_empty(s.LegacyModelSerializer, "LegacyModelOrEmpty"), **errors(413)})
    @action(detail=True, methods=["get"])
    def get_latest_model(self, request: Request, pk: str) -> Response:
        """The original's inlined JSON weights: ``{"values", "aggregate"}``; prefer ``latest_weights``."""
        experiment = self.get_object()
        aggregate = selectors.latest_aggregate(experiment)
        source = aggregate or experiment.current_artifact
        if source is None:
            return Response({})
        if source.size_bytes > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise TooLarge("the model is too large to inline as JSON; download it from latest_weights/")
        with weight_store().open(source.weights_key) as stream:
            values = to_legacy_json(load(stream))
        return Response({"values": values, "aggregate": aggregate.pk if aggregate else None})

    @extend_schema(responses=WEIGHTS_RESPONSE, parameters=WEIGHTS_HEADERS)
    @action(detail=True, methods=["get"], renderer_classes=DOWNLOAD_RENDERERS)
    def latest_weights(self, request: Request, pk: str) -> Any:
        """The newest aggregate's weights as safetensors (the initial model before the first round)."""
        experiment = self.get_object()
        source = selectors.latest_aggregate(experiment) or experiment.current_artifact
        if source is None:
            raise NotFound("this experiment has no weights yet: no initial model and no aggregate")
        response = weights_response(
            request._request,
            key=source.weights_key,
            content_id=source.content_id,
            size=source.size_bytes,
            filename=f"experiment-{experiment.pk}.safetensors",
        )
        # which model this is, for curl users: the aggregate id (the base of their next update)
        response["X-FMA-Aggregate"] = str(source.pk) if isinstance(source, ModelAggregate) else "initial"
        return response

    @extend_schema(
        request={"application/octet-stream": OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter("num_examples", int, description="or header X-FMA-Num-Examples; default 1"),
            OpenApiParameter("base_aggregate", int, description="or header X-FMA-Base-Aggregate"),
            OpenApiParameter("metrics", str, description="JSON; or header X-FMA-Metrics"),
            OpenApiParameter("idempotency_key", str, description="or header Idempotency-Key"),
            OpenApiParameter(
                "update_kind", str, enum=["weights", "delta"], description="or header X-FMA-Update-Kind"
            ),
            OpenApiParameter(
                "sha256", str, description="the body's SHA-256, checked when given; or header X-FMA-SHA256"
            ),
        ],
        responses={201: s.ModelUpdateSerializer, 200: s.ModelUpdateSerializer, **errors(409, 411, 413)},
    )
    @action(detail=True, methods=["post"], parser_classes=[])
    def upload_update(self, request: Request, pk: str) -> Response:
        """Submit an update as a safetensors body, streamed to the weight store; 200 on a retry.

        The experiment is looked up without the list's filters and ordering (``get_object`` would
        apply them, from this request's query string too): only whether the client may see it."""
        experiment = _visible(selectors.experiments_visible(request.user), pk, "experiment")
        django_request = request._request
        body = BodyStream(django_request)
        options = {
            "num_examples": _default(int_option(django_request, "num_examples", "X-FMA-Num-Examples"), 1),
            "base_aggregate_id": int_option(django_request, "base_aggregate", "X-FMA-Base-Aggregate"),
            "metrics": json_option(django_request, "metrics", "X-FMA-Metrics"),
            "idempotency_key": upload_option(django_request, "idempotency_key", "Idempotency-Key"),
            "update_kind": upload_option(django_request, "update_kind", "X-FMA-Update-Kind") or "weights",
            "sha256": upload_option(django_request, "sha256", "X-FMA-SHA256"),
        }
        # A body read whole in memory needs no reader thread running ahead of the store's writes.
        in_memory = body.length <= ingestion.IN_MEMORY_BYTES
        with contextlib.nullcontext(body) if in_memory else Prefetched(body) as stream:
            update, created = ingestion.update_submit(
                experiment=experiment,
                client=request.user.client,
                stream=stream,
                content_length=body.length,
                enrollment_checked=True,  # _visible found it through the client's live enrollment
                **options,
            )
        data = s.ModelUpdateSerializer(update, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ModelUpdateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Updates: clients see their own, developers those of their experiments. Clients create (v1 JSON)."""

    serializer_class = s.ModelUpdateSerializer
    filterset_class = ModelUpdateFilter
    ordering_fields = ["created_on", "id"]
    ordering = ["-created_on"]

    def get_permissions(self) -> list[BasePermission]:
        return [IsClient()] if self.action == "create" else [IsDeveloperOrClient()]

    def get_queryset(self) -> Any:
        return selectors.updates_visible(self.request.user)

    @extend_schema(
        request=s.ModelUpdateCreateSerializer, responses={201: s.ModelUpdateSerializer, **errors(404, 409)}
    )
    def create(self, request: Request) -> Response:
        body = s.ModelUpdateCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        experiment = _visible(
            selectors.experiments_visible(request.user), data["federated_model"], "federated_model"
        )
        update, _ = ingestion.update_submit_legacy_json(
            experiment=experiment,
            client=request.user.client,
            data=data["data"],
            base_aggregate_id=data.get("base_aggregate"),
            num_examples=data["num_examples"],
            metrics=data["metrics"],
            idempotency_key=data["idempotency_key"] or None,
            enrollment_checked=True,  # _visible found it through the client's live enrollment
        )
        # 201 on a replay too: fma-connect treats anything else as an error.
        return Response(self.get_serializer(update).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={**WEIGHTS_RESPONSE, **errors(410)}, parameters=WEIGHTS_HEADERS)
    @action(detail=True, methods=["get"], renderer_classes=DOWNLOAD_RENDERERS)
    def weights(self, request: Request, pk: str) -> Any:
        update = self.get_object()
        if update.weights_removed_on is not None:
            raise Gone(
                f"the weights of update {update.pk} were deleted on {update.weights_removed_on:%Y-%m-%d} "
                f"after the retention period; its SHA-256 was {update.content_id}",
                code="weights_removed",
            )
        return weights_response(
            request._request,
            key=update.weights_key,
            content_id=update.content_id,
            size=update.size_bytes,
            filename=f"update-{update.pk}.safetensors",
        )


class ModelAggregateViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    """Aggregates of the experiments the caller can see; developers set ``validation_score`` and publish."""

    filterset_class = ModelAggregateFilter
    ordering_fields = ["created_on", "round_number", "validation_score"]
    ordering = ["-round_number"]
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_permissions(self) -> list[BasePermission]:
        if self.action in {"list", "retrieve", "weights"}:
            return [IsDeveloperOrClient()]
        return [IsDeveloper()]

    def get_queryset(self) -> Any:
        if self.action in {"list", "retrieve", "weights"}:
            return selectors.aggregates_visible(self.request.user)
        return ModelAggregate.objects.filter(experiment__in=selectors.experiments_owned(self.request.user))

    def get_serializer_class(self) -> type:
        return s.ModelAggregateDetailSerializer if self.action == "retrieve" else s.ModelAggregateSerializer

    def perform_update(self, serializer: s.ModelAggregateSerializer) -> None:
        services.aggregate_set_validation_score(
            aggregate=serializer.instance,
            score=serializer.validated_data.get("validation_score", serializer.instance.validation_score),
        )

    @extend_schema(request=s.PublishSerializer, responses={201: s.ModelArtifactSerializer})
    @action(detail=True, methods=["post"])
    def publish_aggregate(self, request: Request, pk: str) -> Response:
        """Publish the aggregate as the experiment's current artifact under ``version``."""
        aggregate = self.get_object()
        version = request.data.get("version") if isinstance(request.data, dict) else None
        if not isinstance(version, str):
            raise ValidationFailed("version: a version name (string) is required", code="required")
        artifact = services.aggregate_publish(aggregate=aggregate, version=version, user=request.user)
        return Response(
            s.ModelArtifactSerializer(artifact, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(responses=WEIGHTS_RESPONSE, parameters=WEIGHTS_HEADERS)
    @action(detail=True, methods=["get"], renderer_classes=DOWNLOAD_RENDERERS)
    def weights(self, request: Request, pk: str) -> Any:
        aggregate = self.get_object()
        return weights_response(
            request._request,
            key=aggregate.weights_key,
            content_id=aggregate.content_id,
            size=aggregate.size_bytes,
            filename=f"aggregate-{aggregate.pk}.safetensors",
        )


class ModelArtifactViewSet(viewsets.ReadOnlyModelViewSet):
    """Published versions of the experiments the caller can see."""

    serializer_class = s.ModelArtifactSerializer
    permission_classes = [IsDeveloperOrClient]
    ordering_fields = ["created_on", "version"]
    ordering = ["-created_on"]

    def get_queryset(self) -> Any:
        return selectors.artifacts_visible(self.request.user)

    @extend_schema(responses=WEIGHTS_RESPONSE, parameters=WEIGHTS_HEADERS)
    @action(detail=True, methods=["get"], renderer_classes=DOWNLOAD_RENDERERS)
    def weights(self, request: Request, pk: str) -> Any:
        artifact = self.get_object()
        return weights_response(
            request._request,
            key=artifact.weights_key,
            content_id=artifact.content_id,
            size=artifact.size_bytes,
            filename=f"artifact-{artifact.experiment_id}-{artifact.version}.safetensors",
        )


class ClientAggregateScoreViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Clients' evaluations of aggregates: clients post and see their own, developers those of their experiments."""

    serializer_class = s.ClientAggregateScoreSerializer
    filterset_class = ClientAggregateScoreFilter
    ordering_fields = ["created_on"]
    ordering = ["-created_on"]

    def get_permissions(self) -> list[BasePermission]:
        return [IsClient()] if self.action == "create" else [IsDeveloperOrClient()]

    def get_queryset(self) -> Any:
        return selectors.scores_visible(self.request.user)

    @extend_schema(
        request=s.ClientAggregateScoreCreateSerializer,
        responses={
            201: s.ClientAggregateScoreSerializer,
            200: s.ClientAggregateScoreSerializer,
            **errors(404),
        },
    )
    def create(self, request: Request) -> Response:
        body = s.ClientAggregateScoreCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        client = request.user.client
        if data.get("client") not in (None, client.uuid):
            raise Forbidden("a client can only submit its own scores")
        aggregate = _visible(selectors.aggregates_visible(request.user), data["aggregate"], "aggregate")
        score, created = evaluations.score_submit(
            aggregate=aggregate, client=client, validation_results=data["validation_results"]
        )
        return Response(
            self.get_serializer(score).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class RotateCredentialView(APIView):
    """A client replaces its own secret; the old credential stops working at once."""

    permission_classes = [IsClient]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]

    @extend_schema(request=None, responses=s.CredentialSerializer)
    def post(self, request: Request) -> Response:
        if request.user.legacy:
            raise Forbidden("legacy clients have no secret to rotate; enroll with a token to get one")
        credential = services.client_rotate_credential(client=request.user.client)
        return Response({"uuid": str(request.user.client.uuid), "credential": credential})
