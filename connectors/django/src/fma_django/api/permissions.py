"""Who may call what: each endpoint declares one of these; row scoping is in the selectors."""

from __future__ import annotations

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from fma_django.selectors import ClientPrincipal


class IsDeveloper(BasePermission):
    """An active Django user (developer or staff), not a client."""

    message = "Only developers (token or session) may do this."

    def has_permission(self, request: Request, view: object) -> bool:
        user = request.user
        return bool(
            user and user.is_authenticated and user.is_active and not isinstance(user, ClientPrincipal)
        )


class IsClient(BasePermission):
    """An authenticated, enrolled-somewhere client."""

    message = "Only clients (a client credential) may do this."

    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.user, ClientPrincipal)


class IsDeveloperOrClient(BasePermission):
    def has_permission(self, request: Request, view: object) -> bool:
        return IsDeveloper().has_permission(request, view) or IsClient().has_permission(request, view)
