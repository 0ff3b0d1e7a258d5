"""How the credentials appear in the OpenAPI schema (drf-spectacular extensions)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


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
