"""``/dashboard/``: the experiments list, one experiment's page, its polled JSON and CSV, its clients and
each client's page, run comparison, login and logout."""

from django.contrib.auth import views as auth_views
from django.urls import path

from fma_service.dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.experiment_list, name="experiments"),
    path("experiments/<int:pk>/", views.experiment_detail, name="experiment"),
    path("experiments/<int:pk>/live.json", views.experiment_live, name="experiment-live"),
    path("experiments/<int:pk>/rounds.csv", views.experiment_csv, name="experiment-csv"),
    path("experiments/<int:pk>/clients/", views.experiment_clients, name="clients"),
    path("experiments/<int:pk>/clients/<uuid:client>/", views.client_detail, name="client"),
    path("compare/", views.experiments_compare, name="compare"),
    path("experiments/<int:pk>/publish/", views.aggregate_publish, name="publish"),
    path("experiments/<int:pk>/state/", views.experiment_set_state, name="state"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="dashboard/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
