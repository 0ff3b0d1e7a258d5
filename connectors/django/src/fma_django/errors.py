"""Domain exceptions raised by services; one DRF handler (``api.exceptions``) maps them to 4xx JSON."""

from __future__ import annotations


class DomainError(Exception):
    """A request the rules refuse. ``code`` is machine-readable, the message says what to fix."""

    status = 400
    code = "invalid"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class ValidationFailed(DomainError):
    status, code = 400, "invalid"


class NotFound(DomainError):
    status, code = 404, "not_found"


class Forbidden(DomainError):
    status, code = 403, "permission_denied"


class Conflict(DomainError):
    status, code = 409, "conflict"


class Gone(DomainError):
    status, code = 410, "gone"


class LengthRequired(DomainError):
    status, code = 411, "length_required"


class TooLarge(DomainError):
    status, code = 413, "too_large"
