"""A request whose Content-Length is above its route's limit gets 413 before a byte of its body is read.

Django checks ``DATA_UPLOAD_MAX_MEMORY_SIZE`` only when a view reads the body, and the binary
upload routes stream theirs, so without this a client announcing 3 GB kept a connection (and,
depending on the server, a thread) waiting for bytes that were never refused. The limits are
``FMA_BODY_LIMITS`` (route name → bytes) and ``FMA_MAX_REQUEST_BYTES`` for every other route. The
body the client may still send is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin


def body_limit(view_name: str | None) -> int:
    """The largest body, in bytes, that the route named ``view_name`` accepts."""
    return int(settings.FMA_BODY_LIMITS.get(view_name or "", settings.FMA_MAX_REQUEST_BYTES))


class BodyLimitMiddleware(MiddlewareMixin):
    """Refuses a too-large Content-Length once the route is known, before any middleware or view reads
    the body (so it must come before CsrfViewMiddleware, which reads form bodies)."""

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: tuple, kwargs: dict
    ) -> HttpResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None  # the view that reads the body says what is wrong with it
        limit = body_limit(request.resolver_match.view_name if request.resolver_match else None)
        if length <= limit:
            return None
        return JsonResponse(
            {
                "detail": f"Content-Length {length:,} is above the limit of {limit:,} bytes for {request.path}",
                "code": "too_large",
            },
            status=413,
        )
