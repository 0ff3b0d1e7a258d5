"""Domain exceptions raised by services, each with its machine-readable ``code``.

The API's one handler (``api.exceptions``) maps each type to its HTTP status; nothing else picks
a status, and no caller tells refusals apart by their message.
"""

from __future__ import annotations


class DomainError(Exception):
    """A request the rules refuse. ``code`` is machine-readable, the message says what to fix."""

    code = "invalid"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class ValidationFailed(DomainError):
    code = "invalid"


class WeightsInvalid(ValidationFailed):
    """Bytes that are not weights the experiment takes: malformed, another tensor spec, NaN or ±inf."""

    code = "invalid_weights"


class UploadIncomplete(ValidationFailed):
    """An upload session's parts are missing or mis-sized: the client sends them, then completes again."""

    code = "incomplete_upload"


class NotFound(DomainError):
    code = "not_found"


class Forbidden(DomainError):
    code = "permission_denied"


class Conflict(DomainError):
    code = "conflict"


class DuplicateName(Conflict):
    """Another of the developer's experiments has this name: names are unique per developer, because
    ``fma apply`` finds an experiment by its name."""

    code = "duplicate_name"


class NotSelected(Conflict):
    """The experiment samples clients per round and this one is not in the current round's draw:
    nothing is stored; ``retry_after`` (seconds) says when to ask again (the Retry-After header)."""

    code = "not_selected"

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Gone(DomainError):
    code = "gone"


class LengthRequired(DomainError):
    code = "length_required"


class TooLarge(DomainError):
    """Bytes above a size limit: an update, a part, or a model to inline as JSON."""

    code = "too_large"
