"""The dashboard as a Django app, so its templates and static files are found like any app's."""

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "fma_service.dashboard"
    label = "fma_dashboard"
    verbose_name = "FMA dashboard"
