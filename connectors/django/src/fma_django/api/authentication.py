"""How callers prove who they are (the order is in settings' ``DEFAULT_AUTHENTICATION_CLASSES``).

- ``Authorization: Token <secret>``: a developer's API token (``fma_django.developer_tokens``), as
  the original FMA's DRF tokens were sent; an expired one is refused with code ``token_expired``.
  Developers may also use the dashboard's session.
- ``Authorization: Client <uuid>.<secret>``: the credential issued at enrollment; only its hash
  is stored, it can be rotated and revoked.
- ``CLIENT-UUID: <uuid>``: the original FMA's header, for fma-connect 0.0.2. It is weaker (the
  public id is the credential), so it only works for clients that never got a secret, and the
  selectors only show such a client experiments that opted into legacy mode.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from fma_django import credentials, developer_tokens
from fma_django.models import Client, DeveloperToken
from fma_django.selectors import ClientPrincipal

_SEEN_EVERY = timedelta(minutes=1)


def _authenticated(client: Client, *, legacy: bool) -> tuple[ClientPrincipal, None]:
    if client.is_revoked:
        raise AuthenticationFailed("This client's credential is revoked.")
    now = timezone.now()
    if client.last_seen is None or now - client.last_seen > _SEEN_EVERY:
        Client.objects.filter(pk=client.pk).update(last_seen=now)
    return ClientPrincipal(client, legacy=legacy), None


class DeveloperTokenAuthentication(BaseAuthentication):
    keyword = b"token"

    def authenticate(self, request: Request) -> tuple[object, DeveloperToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        token = (
            developer_tokens.developer_token_find(secret=parts[1].decode(errors="replace"))
            if len(parts) == 2
            else None
        )
        if token is None or not token.user.is_active:
            raise AuthenticationFailed("Invalid token.")
        if token.expires_at <= timezone.now():
            raise AuthenticationFailed(
                f"This API token expired at {token.expires_at:%Y-%m-%d %H:%M} UTC: get a new one from "
                "/api-token-auth/ (`fma login`).",
                code="token_expired",
            )
        developer_tokens.developer_token_used(token=token)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return "Token"


class ClientCredentialAuthentication(BaseAuthentication):
    keyword = b"client"

    def authenticate(self, request: Request) -> tuple[ClientPrincipal, None] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        parsed = credentials.parse_credential(parts[1].decode(errors="replace")) if len(parts) == 2 else None
        client = Client.objects.filter(uuid=parsed[0]).first() if parsed else None
        if client is None or not credentials.matches(parsed[1], client.secret_hash):
            raise AuthenticationFailed("Invalid client credential.")
        return _authenticated(client, legacy=False)

    def authenticate_header(self, request: Request) -> str:
        return 'Client realm="api"'


class LegacyClientUUIDAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[ClientPrincipal, None] | None:
        value = request.META.get("HTTP_CLIENT_UUID")
        if value is None:
            return None
        try:
            public_id = uuid.UUID(value)
        except ValueError:
            raise AuthenticationFailed(f'"{value}" is not a valid UUID.') from None
        client = Client.objects.filter(uuid=public_id, secret_hash="").first()
        if client is None:
            raise AuthenticationFailed("Invalid UUID")
        return _authenticated(client, legacy=True)
