from django.apps import AppConfig


class FmaDjangoConfig(AppConfig):
    name = "fma_django"
    verbose_name = "Federated model aggregation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from fma_django import telemetry
        from fma_django.api import schema  # noqa: F401 - registers the OpenAPI auth extensions

        telemetry.connect()
