"""Rate limits for anonymous callers, counted in the cache every API process shares (settings' ``CACHES``).

The rates are ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` by scope, read at each request (DRF's
own classes read them once at import). A caller is its address as DRF tells it (``NUM_PROXIES``):
``REMOTE_ADDR``, or the address a trusted proxy put in ``X-Forwarded-For``, never a header the
caller alone wrote. The login lockout (django-axes) uses the same address.
"""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, BaseThrottle


def client_address(request: HttpRequest) -> str:
    """The caller's address, as the throttles see it (``AXES_CLIENT_IP_CALLABLE``)."""
    return BaseThrottle().get_ident(request)


class _ScopedAnonThrottle(AnonRateThrottle):
    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


class AnonymousRateThrottle(_ScopedAnonThrottle):
    """Every other view anonymous callers may reach (the OpenAPI schema and docs): the default."""

    scope = "anon"


class LoginRateThrottle(_ScopedAnonThrottle):
    """``/api-token-auth/``: password guesses per address (the lockout counts per username too)."""

    scope = "login"


class RegisterRateThrottle(_ScopedAnonThrottle):
    """Anonymous ``register_client/``: new clients per address (open and legacy enrollment make rows)."""

    scope = "register"
