"""Routes: the dashboard, the admin, the v1 API (``fma_django.api``), the token endpoint, the OpenAPI docs,
the health and readiness probes and the metrics (``fma_service.observability``)."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.templatetags.static import static
from django.urls import include, path
from django.views import defaults
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from fma_django.api.tokens import ObtainTokenView
from fma_service.observability.views import healthz, metrics, readyz

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="dashboard:experiments"), name="home"),
    path("dashboard/", include("fma_service.dashboard.urls")),
    path("admin/", admin.site.urls),
    path("api/", include("fma_django.api.urls")),
    path("api-token-auth/", ObtainTokenView.as_view(), name="api-token-auth"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # split: the page's start-up script comes from the same URL (?script), not inline (CSP)
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="dashboard/swagger_ui.html"),
        name="swagger-ui",
    ),
    path("api-auth/", include("rest_framework.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    # what browsers ask for on pages that name no icon (the admin's, the Swagger UI's)
    path("favicon.ico", RedirectView.as_view(url=static("dashboard/favicon.svg")), name="favicon"),
]


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A path nothing routes: under ``/api/`` the API's JSON refusal (as its schema documents), else a page."""
    if request.path.startswith("/api/"):
        detail = f"no API endpoint at {request.path}: see /api/schema/ for the paths and their parameters"
        return JsonResponse({"detail": detail, "code": "not_found"}, status=404)
    return defaults.page_not_found(request, exception)


handler404 = not_found
