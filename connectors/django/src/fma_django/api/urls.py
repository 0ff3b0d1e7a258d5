"""``/api/v1/``: the original's collections and actions, plus weights downloads, upload sessions, client credentials
and developers' API tokens."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from fma_django.api import evaluations, secure_rounds, tokens, uploads, views

app_name = "fma-api"

router = DefaultRouter()
router.register("models", views.ExperimentViewSet, basename="model")
router.register("model_updates", views.ModelUpdateViewSet, basename="model_update")
router.register("model_aggregates", views.ModelAggregateViewSet, basename="model_aggregate")
router.register("model_artifacts", views.ModelArtifactViewSet, basename="model_artifact")
router.register("tokens", tokens.DeveloperTokenViewSet, basename="developer_token")
router.register(
    "client_aggregate_scores", views.ClientAggregateScoreViewSet, basename="client_aggregate_score"
)

upload = "v1/models/<int:experiment_pk>/uploads/"
secure_round = "v1/models/<int:experiment_pk>/secure_round/"
upload_session = upload + "<uuid:upload_id>/"

urlpatterns = [
    path("v1/clients/rotate_credential/", views.RotateCredentialView.as_view(), name="rotate-credential"),
    path(upload, uploads.UploadViewSet.as_view({"post": "create"}), name="uploads"),
    path(
        upload_session,
        uploads.UploadViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="upload",
    ),
    path(
        upload_session + "parts/<int:number>/",
        uploads.UploadViewSet.as_view({"put": "part"}),
        name="upload-part",
    ),
    path(
        upload_session + "complete/",
        uploads.UploadViewSet.as_view({"post": "complete"}),
        name="upload-complete",
    ),
    path(secure_round, secure_rounds.SecureRoundViewSet.as_view({"get": "retrieve"}), name="secure-round"),
    path(
        secure_round + "<int:round_id>/masked_input/",
        secure_rounds.SecureRoundViewSet.as_view({"put": "masked_input"}),
        name="secure-round-masked-input",
    ),
    path(
        secure_round + "<int:round_id>/<str:stage>/",
        secure_rounds.SecureRoundViewSet.as_view({"post": "submit"}),
        name="secure-round-stage",
    ),
    path(
        "v1/models/<int:experiment_pk>/evaluations/",
        evaluations.EvaluationViewSet.as_view({"get": "list", "post": "create"}),
        name="evaluations",
    ),
    path("v1/", include(router.urls)),
]
