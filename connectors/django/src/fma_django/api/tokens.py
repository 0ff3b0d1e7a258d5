"""Developers' API tokens over HTTP: ``POST /api-token-auth/`` (the original FMA's login) and
``/api/v1/tokens/`` to list, make and revoke one's own tokens.

The login keeps the v1 wire protocol (``{"username", "password"}`` in, ``{"token": ...}`` out, then
``Authorization: Token <token>``) and adds ``id`` and ``expires_at`` beside ``token``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate, user_logged_in
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fma_django import developer_tokens
from fma_django.api.permissions import IsDeveloper
from fma_django.api.throttling import LoginRateThrottle
from fma_django.errors import Forbidden, ValidationFailed
from fma_django.models import DeveloperToken


class LoginSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})
    name = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default="", help_text="a label for the new token"
    )


class TokenRequestSerializer(serializers.Serializer):
    name = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default="", help_text="a label for the new token"
    )


class DeveloperTokenSerializer(serializers.ModelSerializer):
    """A token as listed: never the secret, which is shown once when the token is made."""

    current = serializers.SerializerMethodField(help_text="the token this request was made with")

    class Meta:
        model = DeveloperToken
        fields = ["id", "name", "created_at", "expires_at", "last_used_at", "current"]
        read_only_fields = fields

    def get_current(self, token: DeveloperToken) -> bool:
        request = self.context.get("request")
        return (
            request is not None and isinstance(request.auth, DeveloperToken) and request.auth.pk == token.pk
        )


class IssuedTokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="shown only now: send it as `Authorization: Token <token>`")
    id = serializers.IntegerField()
    name = serializers.CharField()
    expires_at = serializers.DateTimeField()


def _issued(token: DeveloperToken, secret: str) -> dict[str, Any]:
    return IssuedTokenSerializer(
        {"token": secret, "id": token.pk, "name": token.name, "expires_at": token.expires_at}
    ).data


def _locked_out(username: str) -> Forbidden:
    cool_off = getattr(settings, "AXES_COOLOFF_TIME", None)
    minutes = round(cool_off.total_seconds() / 60) if cool_off else 0
    until = f"for {minutes} minutes after the last failed attempt, or " if minutes else ""
    return Forbidden(
        f"too many failed logins for {username!r} from this address: logins are refused {until}until an "
        f"administrator unlocks it (the admin's Access attempts, or `manage.py axes_reset_username {username}`)",
        code="locked_out",
    )


class ObtainTokenView(APIView):
    """Exchange a username and password for a new API token (the original FMA's ``/api-token-auth/``).

    Guesses are throttled per address (``LoginRateThrottle``), and the lockout backend (django-axes,
    see settings' ``AUTHENTICATION_BACKENDS``) refuses even the right password after repeated wrong
    ones; it marks the request ``axes_locked_out``, which this view answers with 403 ``locked_out``.
    """

    authentication_classes: list = []  # a login proves who the caller is; it needs no credential
    permission_classes = [AllowAny]
    throttle_classes = [LoginRateThrottle]

    @extend_schema(
        request=LoginSerializer,
        responses=IssuedTokenSerializer,
        description="Exchange a username and password for a new API token (shown once; it expires). "
        "Throttled per caller address (429 with Retry-After). After repeated wrong passwords for a "
        "username from one address, its logins are refused for a while, even with the right password "
        "(403, code locked_out).",
    )
    def post(self, request: Request) -> Response:
        body = LoginSerializer(data=request.data if isinstance(request.data, dict) else {})
        body.is_valid(raise_exception=True)
        user = authenticate(
            request=request,
            username=body.validated_data["username"],
            password=body.validated_data["password"],
        )
        if user is None and getattr(request, "axes_locked_out", False):
            raise _locked_out(body.validated_data["username"])
        if user is None:
            raise ValidationFailed(
                "Unable to log in with the username and password given.", code="invalid_credentials"
            )
        token, secret = developer_tokens.developer_token_create(user=user, name=body.validated_data["name"])
        # A login like the dashboard's: last_login is set, and the lockout forgets earlier failures.
        user_logged_in.send(sender=type(user), request=request, user=user)
        return Response(_issued(token, secret))


class DeveloperTokenViewSet(
    mixins.ListModelMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """The caller's own API tokens: list them, make one more (e.g. for a script), revoke one."""

    queryset = DeveloperToken.objects.none()  # the schema's model; rows come from get_queryset
    serializer_class = DeveloperTokenSerializer
    permission_classes = [IsDeveloper]
    lookup_value_regex = "[0-9]{1,18}"  # a 64-bit id; anything longer is no token's

    def get_queryset(self) -> Any:
        return developer_tokens.developer_tokens_of(user=self.request.user)

    @extend_schema(request=TokenRequestSerializer, responses={201: IssuedTokenSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = TokenRequestSerializer(data=request.data if isinstance(request.data, dict) else {})
        body.is_valid(raise_exception=True)
        token, secret = developer_tokens.developer_token_create(
            user=request.user, name=body.validated_data["name"]
        )
        return Response(_issued(token, secret), status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: DeveloperToken) -> None:
        developer_tokens.developer_token_revoke(token=instance)
