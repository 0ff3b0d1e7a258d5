"""The WeightStore the service writes weight bytes to, built once from settings.

``FMA_WEIGHT_STORE`` names a ``WeightStore`` class (dotted path) and ``FMA_WEIGHT_STORE_OPTIONS``
its keyword arguments; by default it is a ``LocalDirectoryWeightStore`` under ``FMA_WEIGHTS_DIR``.
(fma-service's settings turn the environment's ``FMA_WEIGHT_STORE=s3`` into
``fma_s3.S3WeightStore`` with options from the ``FMA_S3_*`` variables.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from fma_core.connectors import LocalDirectoryWeightStore, WeightStore


@cache
def weight_store() -> WeightStore:
    dotted = getattr(settings, "FMA_WEIGHT_STORE", None)
    if dotted:
        return import_string(dotted)(**getattr(settings, "FMA_WEIGHT_STORE_OPTIONS", {}))
    return LocalDirectoryWeightStore(settings.FMA_WEIGHTS_DIR)


@receiver(setting_changed)
def _forget_store(*, setting: str, **kwargs: object) -> None:
    if setting.startswith("FMA_WEIGHT"):
        weight_store.cache_clear()


def max_update_bytes(experiment_limit: int | None) -> int:
    """The experiment's own limit, never above the service's."""
    service_limit = int(settings.FMA_MAX_UPDATE_BYTES)
    return min(experiment_limit, service_limit) if experiment_limit else service_limit


@contextmanager
def removed_on_failure(
    key: str, *, upload_id: str | None = None, on: type[BaseException] = BaseException
) -> Iterator[None]:
    """Remove what the block stores under ``key`` if it raises ``on``; keep it if the block succeeds.

    A refused or failed request leaves no bytes behind (a crash that skips this, the orphan sweep
    catches later). With ``upload_id`` it is that multipart upload that goes (its parts). ``on``
    narrows what counts as failing: an upload session keeps its joined object through a transient
    error, so that completing again resumes, and drops it only when it is refused.
    """
    try:
        yield
    except on:
        store = weight_store()
        if upload_id is None:
            store.delete(key)
        else:
            store.abort_upload(key, upload_id)
        raise
