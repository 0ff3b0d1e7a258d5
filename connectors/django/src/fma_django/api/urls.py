"""``/api/v1/``: the original's collections and actions, plus weights downloads and client credentials."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from fma_django.api import views

app_name = "fma-api"

router = DefaultRouter()
router.register("models", views.ExperimentViewSet, basename="model")
router.register("model_updates", views.ModelUpdateViewSet, basename="model_update")
router.register("model_aggregates", views.ModelAggregateViewSet, basename="model_aggregate")
router.register("model_artifacts", views.ModelArtifactViewSet, basename="model_artifact")
router.register(
    "client_aggregate_scores", views.ClientAggregateScoreViewSet, basename="client_aggregate_score"
)

urlpatterns = [
    path("v1/clients/rotate_credential/", views.RotateCredentialView.as_view(), name="rotate-credential"),
    path("v1/", include(router.urls)),
]
