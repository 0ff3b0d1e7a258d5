"""The probes and the metrics endpoint. None takes a user's credentials; the probes answer over plain
http too (``settings.SECURE_REDIRECT_EXEMPT``), so a load balancer or an orchestrator reaches them
on the instance itself.

- ``/healthz``: the process answers (liveness: restart it if not). Touches nothing else.
- ``/readyz``: it can serve (readiness: send it traffic only if so): ``fma_aggregator.readiness``'s
  checks, kept a few seconds; 503 with each check's result when one fails.
- ``/metrics``: Prometheus's text format, for a scraper that presents ``FMA_METRICS_TOKEN`` as a
  bearer token; without that setting the endpoint does not exist (use ``FMA_METRICS_ADDRESS``).
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from fma_aggregator.readiness import readiness
from fma_service.observability.prometheus import scrape


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    result = readiness()
    return JsonResponse(
        {"status": "ready" if result.ready else "not_ready", "checks": result.checks},
        status=200 if result.ready else 503,
    )


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.FMA_METRICS_TOKEN
    if not token or settings.FMA_METRICS != "prometheus":
        raise Http404("metrics are not served here")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        refused = JsonResponse(
            {
                "detail": "send the metrics token: Authorization: Bearer <FMA_METRICS_TOKEN>",
                "code": "not_authenticated",
            },
            status=401,
        )
        refused["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return refused
    return HttpResponse(scrape(waiting=True), content_type=CONTENT_TYPE_LATEST)
