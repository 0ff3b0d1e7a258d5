"""``models/{id}/secure_round/``: the SecAgg+ stages a client runs in an experiment with secure aggregation.

Thin: each request is one call of ``fma_django.secure_rounds``; the answer is always the round as the
calling client sees it (its stage, deadline, what the client is asked to do and the material for it).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from fma_django import secure_rounds, selectors, services
from fma_django.api.permissions import IsClient
from fma_django.api.schema import errors
from fma_django.api.transfer import BodyStream, Prefetched
from fma_django.errors import NotFound, ValidationFailed
from fma_django.models import Experiment


class SecureRoundViewSet(viewsets.ViewSet):
    """The calling client's view of its experiment's secure round, and its answers to each stage."""

    permission_classes = [IsClient]
    renderer_classes = [JSONRenderer]

    def _experiment(self, experiment_pk: int) -> Experiment:
        experiment = selectors.experiments_visible(self.request.user).filter(pk=experiment_pk).first()
        if experiment is None:
            raise NotFound(f"no experiment {experiment_pk} that you can access")
        services.check_enrolled(experiment, self.request.user.client)
        return experiment

    @extend_schema(
        parameters=[OpenApiParameter("id", int, description="a round to follow; default: the current one")],
        responses={200: OpenApiTypes.OBJECT, **errors(409)},
    )
    def retrieve(self, request: Request, experiment_pk: int) -> Response:
        """The current secure round (opened by this request if none is), or round ``id``."""
        raw = request.query_params.get("id")
        if raw is not None and not raw.isdigit():
            raise ValidationFailed("id: a secure round's id (an integer)")
        return Response(
            secure_rounds.secure_round_get(
                experiment=self._experiment(experiment_pk),
                client=request.user.client,
                round_id=int(raw) if raw is not None else None,
            )
        )

    @extend_schema(request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT, **errors(409)})
    def submit(self, request: Request, experiment_pk: int, round_id: int, stage: str) -> Response:
        """This client's answer to ``advertise``, ``share_keys`` or ``unmasking`` (a JSON object)."""
        if not isinstance(request.data, dict):
            raise ValidationFailed("a JSON object is expected")
        return Response(
            secure_rounds.secure_round_submit(
                experiment=self._experiment(experiment_pk),
                client=request.user.client,
                round_id=round_id,
                stage=stage,
                payload=request.data,
            )
        )

    @extend_schema(
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={200: OpenApiTypes.OBJECT, **errors(409, 411)},
    )
    def masked_input(self, request: Request, experiment_pk: int, round_id: int, **_: Any) -> Response:
        """This client's masked input: the round's length + 1 uint64 values, little-endian, the weight first."""
        experiment = self._experiment(experiment_pk)
        body = BodyStream(request._request)
        with Prefetched(body) as stream:
            answer = secure_rounds.secure_round_masked_input(
                experiment=experiment,
                client=request.user.client,
                round_id=round_id,
                stream=stream,
                size=body.length,
            )
        return Response(answer)
