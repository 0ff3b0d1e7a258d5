"""``/api/v1/models/{id}/evaluations/``: an experiment's aggregates measured on held-out data
(``fma_django.evaluations``).

    POST evaluations/   {aggregate, metrics, num_examples} → the evaluation (201; 200 for a retry of
                        the same report; 409 evaluation_exists for a different one)
    GET  evaluations/   newest first; ?aggregate=ID, ?source=client|developer, ?after=ID (ids above it)

An enrolled client reports and sees its own; the experiment's developer (or staff) reports her
own evaluator's and sees everyone's. Anyone else gets 404.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from fma_django import evaluations, selectors
from fma_django.api import serializers as s
from fma_django.api.filters import EvaluationFilter
from fma_django.api.permissions import IsDeveloperOrClient
from fma_django.api.schema import errors
from fma_django.errors import NotFound
from fma_django.models import Evaluation, Experiment
from fma_django.selectors import ClientPrincipal


class EvaluationViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Evaluations of one experiment's aggregates."""

    permission_classes = [IsDeveloperOrClient]
    serializer_class = s.EvaluationSerializer
    filterset_class = EvaluationFilter
    ordering_fields = ["created_on", "id"]
    ordering = ["-id"]

    def _experiment(self, *, owned: bool) -> Experiment:
        """The experiment in the URL if the caller may see it (``owned``: change it, for a developer)."""
        principal = self.request.user
        pk = self.kwargs["experiment_pk"]
        scope = (
            selectors.experiments_owned(principal)
            if owned and not isinstance(principal, ClientPrincipal)
            else selectors.experiments_visible(principal)
        )
        experiment = scope.filter(pk=pk).first()
        if experiment is None:
            raise NotFound(f"no experiment {pk} that you can access")
        return experiment

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):  # the schema generator, with no experiment in the URL
            return Evaluation.objects.none()
        experiment = self._experiment(owned=False)
        return selectors.evaluations_visible(self.request.user).filter(aggregate__experiment=experiment)

    @extend_schema(
        request=s.EvaluationCreateSerializer,
        responses={201: s.EvaluationSerializer, 200: s.EvaluationSerializer, **errors(404, 409)},
    )
    def create(self, request: Request, experiment_pk: int) -> Response:
        experiment = self._experiment(owned=True)
        body = s.EvaluationCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        principal = request.user
        evaluation, created = evaluations.evaluation_submit(
            experiment=experiment,
            aggregate_id=data["aggregate"],
            metrics=data["metrics"],
            num_examples=data["num_examples"],
            client=principal.client if isinstance(principal, ClientPrincipal) else None,
            user=None if isinstance(principal, ClientPrincipal) else principal,
        )
        return Response(
            self.get_serializer(evaluation).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
