"""One place that turns refusals into HTTP: ``{"detail": ..., "code": ...}`` with the right 4xx.

Every refusal has that shape (the ``Error`` component of the OpenAPI schema), also DRF's field
errors, which keep their messages under each field's name beside ``detail`` and ``code`` (as the
original v1 API named them); and it is JSON even where the client asked for weights
(``Accept: application/octet-stream``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from fma_core.errors import ConfigurationError, InvalidWeights, StoreUnavailable
from fma_django import errors

STORE_RETRY_AFTER_SECONDS = 5
"""When a request that found the weight store failing (503) is worth sending again."""

# Each domain error's status, by its nearest type here: a subtype (``WeightsInvalid``,
# ``UploadIncomplete``) answers as its parent, with its own code.
STATUS: dict[type[errors.DomainError], int] = {
    errors.ValidationFailed: status.HTTP_400_BAD_REQUEST,
    errors.Forbidden: status.HTTP_403_FORBIDDEN,
    errors.NotFound: status.HTTP_404_NOT_FOUND,
    errors.Conflict: status.HTTP_409_CONFLICT,
    errors.Gone: status.HTTP_410_GONE,
    errors.LengthRequired: status.HTTP_411_LENGTH_REQUIRED,
    errors.TooLarge: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    errors.DomainError: status.HTTP_400_BAD_REQUEST,
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = _refusal(exc, context)
    request = context.get("request")
    if response is not None and request is not None:
        request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
    return response


def status_of(error: errors.DomainError) -> int:
    """The HTTP status of a refusal: that of the nearest of its types in ``STATUS``."""
    return next(STATUS[kind] for kind in type(error).__mro__ if kind in STATUS)


def _messages(detail: Any, prefix: str = "") -> list[str]:
    """DRF's nested error details as ``field: message`` lines."""
    if isinstance(detail, dict):
        return [line for key, value in detail.items() for line in _messages(value, f"{prefix}{key}.")]
    if isinstance(detail, list):
        return [line for value in detail for line in _messages(value, prefix)]
    return [f"{prefix[:-1]}: {detail}" if prefix else str(detail)]


def _refusal(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {}
        body = {**fields, "detail": "; ".join(_messages(exc.detail)) or "invalid input", "code": "invalid"}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, RequestDataTooBig):
        # A JSON body above DATA_UPLOAD_MAX_MEMORY_SIZE: JSON is parsed in memory, binary is not.
        detail = f"the request body is above the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes for JSON; upload weights as safetensors to models/<id>/upload_update/"
        return Response(
            {"detail": detail, "code": "too_large"}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
        )
    if isinstance(exc, errors.DomainError):
        retry_after = getattr(exc, "retry_after", None)  # NotSelected: when to ask again
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return Response({"detail": exc.detail, "code": exc.code}, status=status_of(exc), headers=headers)
    if isinstance(exc, StoreUnavailable):  # the store's moment, not the request's fault: nothing was refused
        return Response(
            {
                "detail": "the weight store is unavailable for a moment: send the request again",
                "code": "store_unavailable",
            },
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, InvalidWeights):
        return Response({"detail": str(exc), "code": "invalid_weights"}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, ConfigurationError):
        return Response(
            {"detail": str(exc), "code": "invalid_configuration"}, status=status.HTTP_400_BAD_REQUEST
        )
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and set(response.data) == {"detail"}:
        response.data["code"] = getattr(response.data["detail"], "code", "error")
    return response
