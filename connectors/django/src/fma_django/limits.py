"""Every bound FMA puts on what callers send, in one place, so the checks and the docs agree.

The database bounds are the narrowest of the supported databases' columns (PostgreSQL's; SQLite
stores any integer up to 64 bits): a value past them would fail in the database driver as a 500
instead of being refused as a 400 naming the field.
"""

from __future__ import annotations

MAX_BIGINT = 2**63 - 1
"""Ids (BigAutoField), sizes and ``num_examples`` (PositiveBigIntegerField)."""

MAX_INT = 2**31 - 1
"""PositiveIntegerField columns: round numbers, ``max_uses``, ``furthest_base_agg``."""

MAX_TOKEN_LIFETIME_SECONDS = 10 * 366 * 86400
"""The longest ``expires_in_seconds`` of an enrollment token (ten years; omit it for no expiry)."""


def whole_number_range(low: int, high: int) -> str:
    """How a refusal names an integer's allowed range."""
    return f"a whole number from {low} to {high}"


VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"
"""A published version's name, semantic-version-like: ``1.2.0``, ``2.0.0-rc.1+build.5``, ``round-3``."""

VERSION_RULE = (
    "1 to 64 ASCII letters, digits and the characters . _ + -, starting with a letter or digit "
    "(for example 1.2.0, 2.0.0-rc.1 or round-3)"
)

IDEMPOTENCY_KEY_PATTERN = r"[\x21-\x7e]{1,128}"
"""An idempotency key (header ``Idempotency-Key`` or field ``idempotency_key``): its column holds 128."""

IDEMPOTENCY_KEY_RULE = "1 to 128 printable ASCII characters without spaces (a UUID makes a good key)"
