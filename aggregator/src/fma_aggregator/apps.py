"""The Django app: connects the API's "round may be ready" signal to the configured runner."""

from __future__ import annotations

from django.apps import AppConfig


class AggregatorAppConfig(AppConfig):
    name = "fma_aggregator"
    label = "fma_aggregator"
    verbose_name = "FMA aggregator"

    def ready(self) -> None:
        from fma_aggregator.runners import notify
        from fma_django.signals import round_may_be_ready

        def on_round_may_be_ready(*, experiment_id: int, **kwargs: object) -> None:
            notify(experiment_id)

        round_may_be_ready.connect(on_round_may_be_ready, weak=False, dispatch_uid="fma_aggregator.notify")
