"""The exceptions of fma_client: catch ``FmaClientError`` broadly or one subclass narrowly.

Each message says what went wrong (the server's own words when it gave any) and what to do next.
The server answers errors as JSON ``{"detail": ..., "code": ...}``; DRF's field errors
(``{"field": ["message"]}``) and non-JSON bodies (a proxy's HTML page) are turned into text too.
"""

from __future__ import annotations

import re
from typing import Any

import requests


class FmaClientError(Exception):
    """Base of every error this package raises. ``status_code``, ``code`` and ``detail`` come from the server.

    ``idempotency_key`` is set on the error of a push that gave up part-way (the server was
    unavailable, a transfer kept failing, a check did not end in time): pushing again with that
    key finishes the same upload, and the server counts the update once.
    """

    hint = ""
    idempotency_key: str | None = None

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        response: requests.Response | None = None,
    ) -> None:
        self.detail = detail
        self.status_code = status_code
        self.code = code
        self.response = response
        prefix = f"HTTP {status_code}: " if status_code is not None else ""
        super().__init__(f"{prefix}{detail}" + (f" — {self.hint}" if self.hint else ""))


class AuthenticationError(FmaClientError):
    """401: no credential, or one the server does not accept (wrong, rotated, or revoked)."""

    hint = "check the token: developers run `fma login` again; clients use the credential they got when enrolling, or enroll again with a new enrollment token"


class TokenExpired(AuthenticationError):
    """401 with code ``token_expired``: the developer's API token is past its expiry (see the server's FMA_TOKEN_TTL_DAYS)."""

    hint = "get a new token: run `fma login` again, or Developer.login(url, username, password)"


class PermissionDenied(FmaClientError):
    """403: authenticated, but not allowed to do this (e.g. a client calling a developer endpoint)."""

    hint = "this credential may not do that; ask the experiment's developer"


class LockedOut(PermissionDenied):
    """403 with code ``locked_out``: too many wrong passwords for this username from this address."""

    hint = "wait until the lockout ends (the message says how long), or ask the service's administrator to unlock the account"


class NotFound(FmaClientError):
    """404: no such resource that this caller may see (the server does not reveal which)."""

    hint = "check the id, and that you own the experiment or are enrolled in it"


class ValidationError(FmaClientError):
    """400/411/413/422: the server refused the request's content; ``detail`` says what to fix."""


class ConflictError(FmaClientError):
    """409: the request contradicts the server's state (e.g. an idempotency key reused elsewhere)."""


class NotSelected(ConflictError):
    """409 with code ``not_selected``: the experiment takes a sample of its clients each round, and the
    current round did not take this one. ``retry_after``: the seconds the server said to wait before
    asking again. ``Client.pull`` and ``push`` wait and ask again by themselves, and raise this once
    their ``selection_wait`` is used up."""

    hint = "wait for a round that selects this client (Client(..., selection_wait=...) waits longer)"
    retry_after: float | None = None


class ServerUnavailable(FmaClientError):
    """The server could not be reached, or kept failing (429/5xx), after every retry."""

    hint = "check the URL and your network, or try again later; if it persists, tell the service's operator"


class TransferError(FmaClientError):
    """Weights arrived incomplete or corrupt (the connection broke, or the hash did not match), after retries."""

    hint = "try again; if it persists, the network or a proxy is cutting large transfers"


class WaitTimeout(FmaClientError, TimeoutError):
    """``wait_for_new_model`` gave up: no newer aggregate appeared in time."""


class CheckTimeout(FmaClientError, TimeoutError):
    """A push gave up waiting for the server's check of a large upload; the upload may still complete."""


_BY_STATUS: dict[int, type[FmaClientError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: ConflictError,
    411: ValidationError,
    413: ValidationError,
    422: ValidationError,
}


_BY_CODE: dict[str, type[FmaClientError]] = {
    "token_expired": TokenExpired,
    "locked_out": LockedOut,
    "not_selected": NotSelected,
}


def describe_body(response: requests.Response) -> tuple[str, str | None]:
    """``(detail, code)`` of an error response, whatever its body is."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text
        if "html" in response.headers.get("Content-Type", "") or text.lstrip().startswith("<"):
            text = re.sub(r"<[^>]*>", " ", text)  # a proxy's error page: keep its words
        text = " ".join(text.split())
        if not text:
            return (response.reason or "no details given"), None
        return (text[:300] + ("…" if len(text) > 300 else "")), None
    if isinstance(body, dict):
        if "detail" in body:
            return str(body["detail"]), body.get("code") if isinstance(body.get("code"), str) else None
        parts = []
        for field, messages in body.items():
            text = "; ".join(map(str, messages)) if isinstance(messages, list) else str(messages)
            parts.append(text if field == "non_field_errors" else f"{field}: {text}")
        return "; ".join(parts) or "no details given", None
    if isinstance(body, list):
        return "; ".join(map(str, body)), None
    return str(body), None


def error_from_response(response: requests.Response, *, attempts: int = 1) -> FmaClientError:
    """The exception for a failed response; 429 and 5xx mean the retries are used up."""
    detail, code = describe_body(response)
    status = response.status_code
    if status == 429 or status >= 500:
        tried = f" (tried {attempts} times)" if attempts > 1 else ""
        return ServerUnavailable(
            f"the server kept failing{tried}: {detail}",
            status_code=status,
            code=code,
            response=response,
        )
    kind = _BY_CODE.get(code or "") or _BY_STATUS.get(status, FmaClientError)
    error = kind(detail, status_code=status, code=code, response=response)
    if isinstance(error, NotSelected):
        error.retry_after = retry_after(response)
    return error


def retry_after(response: requests.Response) -> float | None:
    """The Retry-After header's seconds (the service sends a number of seconds), None if absent or not one."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
