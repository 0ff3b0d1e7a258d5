"""Client credentials and enrollment tokens: random secrets shown once, stored only as SHA-256.

A credential reads ``<client uuid>.<secret>``, so the server finds the client by its public id
and compares hashes in constant time. The secrets are 256 random bits, so a fast hash is enough:
there is no password to guess.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def credential(client_uuid: uuid.UUID, secret: str) -> str:
    return f"{client_uuid}.{secret}"


def parse_credential(value: str) -> tuple[uuid.UUID, str] | None:
    """``(uuid, secret)`` of a credential string, or None if it is not one."""
    public, _, secret = value.partition(".")
    try:
        return uuid.UUID(public), secret
    except ValueError:
        return None


def matches(secret: str, stored_hash: str) -> bool:
    return bool(stored_hash) and hmac.compare_digest(hash_secret(secret), stored_hash)
