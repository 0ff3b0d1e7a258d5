"""Complete one upload session in a process of its own, as the API would: ``python complete_upload.py UUID``.

A test SIGKILLs it in the middle (see ``slow_store.PausingWeightStore``)."""

from __future__ import annotations

import sys

from fma_aggregator.django_setup import setup_django

setup_django()

from fma_django import ingestion  # noqa: E402
from fma_django.models import UploadSession  # noqa: E402

if __name__ == "__main__":
    ingestion.upload_complete(session=UploadSession.objects.get(uuid=sys.argv[1]))
