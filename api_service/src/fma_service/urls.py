"""Routes: the dashboard, the admin, the v1 API (``fma_django.api``), the token endpoint and the OpenAPI docs."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from fma_django.api.tokens import ObtainTokenView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="dashboard:experiments"), name="home"),
    path("dashboard/", include("fma_service.dashboard.urls")),
    path("admin/", admin.site.urls),
    path("api/", include("fma_django.api.urls")),
    path("api-token-auth/", ObtainTokenView.as_view(), name="api-token-auth"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api-auth/", include("rest_framework.urls")),
]
