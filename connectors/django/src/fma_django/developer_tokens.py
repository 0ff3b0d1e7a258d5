"""Developers' API tokens: made at login, found by their SHA-256, expiring, listed and revoked.

The secret is 256 random bits, shown once, in hex (a URL-safe one may begin with "-", which a
command line such as ``fma login --token`` reads as an option); the database keeps only its
SHA-256 (as for client credentials, see ``credentials``), so a copy of the database lets nobody
act as a developer.
A token found but past its ``expires_at`` is kept, so that the caller is told it *expired* (and to
log in again) rather than that it is wrong.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet
from django.utils import timezone

from fma_django import credentials
from fma_django.models import DeveloperToken

_USED_EVERY = timedelta(minutes=1)


def developer_token_create(*, user: AbstractBaseUser, name: str = "") -> tuple[DeveloperToken, str]:
    """A new token for ``user``, valid for ``settings.FMA_TOKEN_TTL``; returns the row and the secret."""
    secret = secrets.token_hex(32)
    row = DeveloperToken.objects.create(
        user=user,
        digest=credentials.hash_secret(secret),
        name=name,
        expires_at=timezone.now() + settings.FMA_TOKEN_TTL,
    )
    return row, secret


def developer_token_find(*, secret: str) -> DeveloperToken | None:
    """The token whose hash this secret has (expired or not), with its user; None if there is none."""
    return (
        DeveloperToken.objects.select_related("user").filter(digest=credentials.hash_secret(secret)).first()
    )


def developer_token_used(*, token: DeveloperToken) -> None:
    """Note that the token was used: at most one write a minute, so reads stay reads."""
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _USED_EVERY:
        DeveloperToken.objects.filter(pk=token.pk).update(last_used_at=now)


def developer_tokens_of(*, user: AbstractBaseUser) -> QuerySet[DeveloperToken]:
    return DeveloperToken.objects.filter(user=user)


def developer_token_revoke(*, token: DeveloperToken) -> None:
    """Revoking deletes the row: the token is then unknown, like any wrong one."""
    token.delete()
