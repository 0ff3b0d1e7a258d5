"""``/health/``: the probe of a load balancer or an orchestrator. It answers 200 without credentials
and over plain http (settings.SECURE_REDIRECT_EXEMPT), and says nothing about the service."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})
