"""The service's URLs plus ``bench/floor/<experiment>/``: the least a durable push can cost on this server.

The floor request is what an accepted update cannot do without, and nothing else: the same
client-credential authentication, the body streamed to the same weight store (temporary file,
fsync, rename), one row committed (an event). No metadata checks, no tensor check, no twin or
idempotency lookup, no round announcement. ``scale.py --clients`` sends it the same bodies at the
same concurrency as the pushes, in the same run, and reports pushes/s over floor requests/s.
"""

from __future__ import annotations

import uuid

from django.db import transaction
from django.urls import path
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fma_django.api.authentication import ClientCredentialAuthentication
from fma_django.api.transfer import BodyStream
from fma_django.models import Event, EventKind
from fma_django.storage import weight_store
from fma_service.urls import urlpatterns as service_urlpatterns


class Floor(APIView):
    authentication_classes = (ClientCredentialAuthentication,)
    permission_classes = (IsAuthenticated,)
    parser_classes = ()

    def post(self, request: Request, experiment: int) -> Response:
        client = request.user.client
        stored = weight_store().put(
            f"updates/{experiment}/floor-{uuid.uuid4().hex}.safetensors", BodyStream(request._request)
        )
        with transaction.atomic():
            Event.objects.create(
                kind=EventKind.UPDATE_ACCEPTED,
                experiment_id=experiment,
                client=client,
                detail={"floor": stored.key},
            )
        return Response({"size": stored.size, "sha256": stored.sha256}, status=201)


urlpatterns = [
    path("bench/floor/<int:experiment>/", Floor.as_view(), name="bench-floor"),
    *service_urlpatterns,
]
