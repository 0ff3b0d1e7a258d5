"""Configure Django once for the entry points that are not started by Django (Celery, Lambda, CLI)."""

from __future__ import annotations

import os


def setup_django() -> None:
    """Use ``fma_service.settings`` unless ``DJANGO_SETTINGS_MODULE`` says otherwise; idempotent."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fma_service.settings")
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
