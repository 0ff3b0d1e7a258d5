"""How the API appears in its OpenAPI schema (drf-spectacular): what the server really sends.

- Every refusal is the ``Error`` component, ``{"detail": str, "code": str}`` (``api.exceptions``
  makes it so). ``AutoSchema`` declares for each operation the refusals any operation of its kind
  can answer: 401 (it takes credentials), 403 (permissions run everywhere), 404 (a path parameter
  names a row, or a page is past the end), 400, 413 and 415 (there is a body or a query to
  parse), 429 (the view has throttles). A view adds its own (409, 410, 411, ...) with
  ``errors(...)`` in its ``extend_schema`` responses.
- ``or_empty(serializer)``: the original's ``{}`` when there is nothing yet (v1 behaviour).
- The developer tokens' and the client credentials' security schemes.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer
from rest_framework import serializers

ERROR_DESCRIPTIONS = {
    400: "the request is invalid: detail says what to fix",
    401: "no credentials, or invalid ones",
    403: "the caller may not do this",
    404: "no such resource that the caller can access (or a page past the end)",
    409: "the request conflicts with the resource's state; code not_selected: the experiment samples "
    "clients per round and this round did not select the caller, who may ask again after the Retry-After "
    "header's seconds",
    410: "the resource's bytes were deleted",
    411: "Content-Length is required",
    413: "the body is too large",
    415: "the body's media type is not accepted",
    429: "too many requests: retry after the Retry-After header's seconds",
}


class ErrorSerializer(serializers.Serializer):
    """Every refusal: what is wrong and what to do (``detail``), and a machine-readable ``code``."""

    detail = serializers.CharField()
    code = serializers.CharField()

    class Meta:
        ref_name = "Error"


class ErrorScheme(OpenApiSerializerExtension):
    """Invalid input also names each field, with its messages, beside ``detail`` and ``code``."""

    target_class = ErrorSerializer

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target_class, direction, bypass_extensions=True)
        schema["additionalProperties"] = {"description": "invalid input: a field's messages, under its name"}
        return schema


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """Responses for ``extend_schema``: these refusals, each the ``Error`` component."""
    return {
        status: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[status])
        for status in statuses
    }


class EmptyObjectSerializer(serializers.Serializer):
    """``{}``: what the original answers where there is nothing yet."""


class EmptyObjectScheme(OpenApiSerializerExtension):
    target_class = EmptyObjectSerializer

    def get_name(self, auto_schema: Any, direction: str) -> str:
        return "EmptyObject"

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": False, "description": "nothing yet"}


def or_empty(serializer: type[serializers.Serializer], name: str) -> PolymorphicProxySerializer:
    """The serializer's object, or ``{}`` (a oneOf: an empty object never matches the serializer)."""
    return PolymorphicProxySerializer(
        component_name=name, serializers=[serializer, EmptyObjectSerializer], resource_type_field_name=None
    )


def nulls_as_json_schema(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: say "or null" the OpenAPI 3.1 way everywhere, so validators agree.

    drf-spectacular writes a nullable JSONField as ``oneOf: [{}, {"type": "null"}]``, which no
    value satisfies (null matches both branches), and DRF's paginator still writes OpenAPI 3.0's
    ``nullable: true``, which 3.1 ignores.
    """

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("oneOf") == [{}, {"type": "null"}]:
                node = {key: value for key, value in node.items() if key != "oneOf"}
            if node.get("nullable") is True and isinstance(node.get("type"), str):
                node = {key: value for key, value in node.items() if key != "nullable"}
                node["type"] = [node["type"], "null"]
            return {key: visit(value) for key, value in node.items()}
        if isinstance(node, list):
            return [visit(value) for value in node]
        return node

    return visit(result)


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's schema plus the refusals each operation can answer (``DEFAULT_SCHEMA_CLASS``)."""

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for status in sorted(self._refusals()):
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(
                    errors(status)[status], str(status), media_types=["application/json"], direction=direction
                )
        return responses

    def _refusals(self) -> set[int]:
        refusals = {403} | ({401} if self.view.get_authenticators() else set())
        parameters = self._get_parameters()
        if "{" in self.path or self._is_list_view():
            refusals.add(404)
        if any(parameter["in"] == "query" for parameter in parameters):
            refusals.add(400)
        if self.method in {"POST", "PUT", "PATCH"}:
            refusals |= {400, 413}
            if any(not media.endswith("octet-stream") for media in self.map_parsers()):
                refusals.add(415)
        if self.view.get_throttles():
            refusals.add(429)
        return refusals


class DeveloperTokenScheme(OpenApiAuthenticationExtension):
    target_class = "fma_django.api.authentication.DeveloperTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: object) -> dict:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "'Token <token>', a developer's API token from /api-token-auth/ (it expires)",
        }


class ClientCredentialScheme(OpenApiAuthenticationExtension):
    target_class = "fma_django.api.authentication.ClientCredentialAuthentication"
    name = "clientCredential"

    def get_security_definition(self, auto_schema: object) -> dict:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "'Client <credential>', the credential returned by register_client",
        }


class LegacyClientUUIDScheme(OpenApiAuthenticationExtension):
    target_class = "fma_django.api.authentication.LegacyClientUUIDAuthentication"
    name = "legacyClientUUID"

    def get_security_definition(self, auto_schema: object) -> dict:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "CLIENT-UUID",
            "description": "legacy mode only (weaker): the client's uuid is its credential",
        }
