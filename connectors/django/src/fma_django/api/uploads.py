"""``/api/v1/models/{id}/uploads/``: upload sessions, an update's bytes sent in parts (``fma_django.ingestion``).

    POST   uploads/                         start: metadata, size, SHA-256 (or at complete) → targets
                                            (201; 200 on a retry)
    GET    uploads/{upload}/                state, parts received, fresh targets (resume)
    PUT    uploads/{upload}/parts/{n}/      one part's bytes, for stores without presigned URLs
    POST   uploads/{upload}/complete/       {sha256} if not given at start; join, check, accept →
                                            the update (201; 200 again, 409 with another SHA-256), or,
                                            above FMA_UPLOAD_INLINE_CHECK_BYTES, 202 with the session
                                            while a runner checks it: poll GET until completed/rejected
    DELETE uploads/{upload}/                abort

Only the client that started an upload sees it; anyone else gets 404.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from fma_django import ingestion, selectors
from fma_django.api import serializers as s
from fma_django.api.permissions import IsClient
from fma_django.api.schema import errors
from fma_django.api.transfer import BodyStream, Prefetched
from fma_django.errors import NotFound
from fma_django.models import Experiment, UploadSession


class UploadViewSet(viewsets.ViewSet):
    """Upload sessions of the calling client in one experiment."""

    permission_classes = [IsClient]
    renderer_classes = [JSONRenderer]

    def _experiment(self, experiment_pk: int) -> Experiment:
        experiment = selectors.experiments_visible(self.request.user).filter(pk=experiment_pk).first()
        if experiment is None:
            raise NotFound(f"no experiment {experiment_pk} that you can access")
        return experiment

    def _session(self, experiment_pk: int, upload_id: Any) -> UploadSession:
        session = (
            UploadSession.objects.filter(
                experiment=self._experiment(experiment_pk), client=self.request.user.client, uuid=upload_id
            )
            .select_related("update__client")
            .first()
        )
        if session is None:
            raise NotFound(f"no upload {upload_id} of yours in experiment {experiment_pk}")
        return session

    def _answer(self, session: UploadSession, code: int = status.HTTP_200_OK) -> Response:
        return Response(
            s.UploadSessionSerializer(session, context={"request": self.request}).data, status=code
        )

    @extend_schema(
        request=s.UploadStartSerializer,
        responses={201: s.UploadSessionSerializer, 200: s.UploadSessionSerializer, **errors(409)},
    )
    def create(self, request: Request, experiment_pk: int) -> Response:
        """Start an upload: the update's metadata and size are checked before any byte is sent.

        The SHA-256 is given here or when completing: a client that hashes its file while sending
        its parts reads it once.
        """
        experiment = self._experiment(experiment_pk)
        body = s.UploadStartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        session, created = ingestion.upload_start(
            experiment=experiment,
            client=request.user.client,
            size=data["size"],
            sha256=data["sha256"],
            num_examples=data["num_examples"],
            base_aggregate_id=data["base_aggregate"],
            metrics=data["metrics"],
            idempotency_key=data["idempotency_key"] or request.META.get("HTTP_IDEMPOTENCY_KEY") or None,
            update_kind=data["update_kind"],
        )
        return self._answer(session, status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(responses=s.UploadSessionSerializer)
    def retrieve(self, request: Request, experiment_pk: int, upload_id: Any) -> Response:
        """The session: the parts received so far and fresh targets, so a broken upload resumes."""
        return self._answer(self._session(experiment_pk, upload_id))

    @extend_schema(
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={200: s.UploadedPartSerializer, **errors(409, 411)},
    )
    def part(self, request: Request, experiment_pk: int, upload_id: Any, number: int) -> Response:
        """One part's bytes (Content-Length required), streamed to the weight store; sending it again replaces it."""
        session = self._session(experiment_pk, upload_id)
        body = BodyStream(request._request)
        with Prefetched(body) as stream:
            part = ingestion.upload_part_put(
                session=session, number=number, stream=stream, length=body.length
            )
        return Response(s.UploadedPartSerializer(part).data)

    @extend_schema(
        request=s.UploadCompleteSerializer,
        responses={
            201: s.ModelUpdateSerializer,
            200: s.ModelUpdateSerializer,
            202: OpenApiResponse(
                s.UploadSessionSerializer,
                description="the upload is being checked (state checking): poll the session until it "
                "is completed (its update) or rejected (reason, reason_code)",
            ),
            **errors(409),
        },
    )
    def complete(self, request: Request, experiment_pk: int, upload_id: Any) -> Response:
        """Join the parts and accept the update (201), or say what is wrong (4xx); 200 with the update again.

        An upload above the service's inline limit is checked by the aggregator's runner instead:
        202 with the session, whose state is ``checking`` until it is completed or rejected.
        """
        body = s.UploadCompleteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        completion = ingestion.upload_complete(
            session=self._session(experiment_pk, upload_id), sha256=body.validated_data["sha256"]
        )
        if completion.update is None:
            return self._answer(completion.session, status.HTTP_202_ACCEPTED)
        return Response(
            s.ModelUpdateSerializer(completion.update, context={"request": request}).data,
            status=status.HTTP_201_CREATED if completion.created else status.HTTP_200_OK,
        )

    @extend_schema(responses={200: s.UploadSessionSerializer, **errors(409)})
    def destroy(self, request: Request, experiment_pk: int, upload_id: Any) -> Response:
        """Abort the upload: its parts are dropped."""
        return self._answer(ingestion.upload_abort(session=self._session(experiment_pk, upload_id)))
