"""The Django app: connects the API's "round may be ready" and "check this upload" signals to the configured runner."""

from __future__ import annotations

from django.apps import AppConfig


class AggregatorAppConfig(AppConfig):
    name = "fma_aggregator"
    label = "fma_aggregator"
    verbose_name = "FMA aggregator"

    def ready(self) -> None:
        from fma_aggregator.runners import notify, request_check, request_unmask
        from fma_django.signals import (
            round_may_be_ready,
            secure_round_unmask_requested,
            upload_check_requested,
        )

        def on_round_may_be_ready(*, experiment_id: int, **kwargs: object) -> None:
            notify(experiment_id)

        def on_upload_check_requested(*, upload_id: str, **kwargs: object) -> None:
            request_check(upload_id)

        round_may_be_ready.connect(on_round_may_be_ready, weak=False, dispatch_uid="fma_aggregator.notify")
        upload_check_requested.connect(
            on_upload_check_requested, weak=False, dispatch_uid="fma_aggregator.request_check"
        )

        def on_secure_round_unmask_requested(*, round_id: int, **kwargs: object) -> None:
            request_unmask(round_id)

        secure_round_unmask_requested.connect(
            on_secure_round_unmask_requested, weak=False, dispatch_uid="fma_aggregator.request_unmask"
        )
