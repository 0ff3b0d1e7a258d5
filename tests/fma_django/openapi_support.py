"""Checks an answer of the API against the service's own OpenAPI schema (``/api/schema/``).

A response conforms when its status is documented for the operation, it has the headers
documented as required, its media type is one the operation documents for that status, and a
JSON body validates against the documented schema (OpenAPI 3.1: its schemas are JSON Schema
2020-12, so ``jsonschema`` validates them as they are).
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE = "urn:fma:openapi"


def load_schema(api: Any) -> dict[str, Any]:
    response = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def nonconformity(schema: dict[str, Any], method: str, path: str, response: Any) -> str | None:
    """What is wrong with ``response`` as an answer of ``method path`` (a template), or None."""
    responses = schema["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    if status not in responses:
        return f"{method} {path}: status {status} is not documented (only {sorted(responses)})"
    missing = [
        name
        for name, header in responses[status].get("headers", {}).items()
        if header.get("required") and not response.has_header(name)
    ]
    if missing:
        return f"{method} {path} {status}: no {', '.join(missing)} header, which is documented as required"
    content = responses[status].get("content")
    body = b"".join(response.streaming_content) if response.streaming else response.content
    if not content:
        return None if not body else f"{method} {path} {status}: a body where none is documented"
    media = response.get("Content-Type", "").split(";")[0].strip()
    if media not in content:
        return f"{method} {path} {status}: media type {media!r} is not documented (only {sorted(content)})"
    if media != "application/json":
        return None
    pointer = _pointer("paths", path, method.lower(), "responses", status, "content", media, "schema")
    registry = Registry().with_resource(BASE, Resource.from_contents(schema, DRAFT202012))
    validator = Draft202012Validator({"$ref": f"{BASE}#/{pointer}"}, registry=registry)
    errors = sorted(validator.iter_errors(response.json()), key=lambda e: list(e.absolute_path))
    if errors:
        return f"{method} {path} {status}: {errors[0].message} at {list(errors[0].absolute_path)}"
    return None
