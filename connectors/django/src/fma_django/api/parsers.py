"""JSON bodies, refused before parsing when larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE``.

DRF reads JSON straight from the request stream, bypassing Django's own body-size check, and a
parsed JSON float list costs many times its text in memory: the limit must be applied here.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.parsers import JSONParser

from fma_django.errors import TooLarge


class LimitedJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        request = (parser_context or {}).get("request")
        length = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and length > limit:
            raise TooLarge(
                f"the JSON body is {length:,} bytes; the limit is {limit:,}. Upload weights as safetensors to upload_update/"
            )
        return super().parse(stream, media_type, parser_context)
