"""JSON from callers, with a bound on nesting: the default parser of the API and of the JSON in
upload headers and query strings.

Python's JSON decoder recurses once per level, so ~1,000 levels raise ``RecursionError`` (a 500)
and a few hundred parse but can exhaust the stack later, in schema validation or rendering.
Nothing FMA takes needs more than a handful of levels (a layer of a JSON model is a tensor's
rank deep), so anything deeper than ``MAX_JSON_DEPTH`` is refused as a 400 before it is used.
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_JSON_DEPTH = 64
"""The most levels of arrays and objects one JSON value may nest."""


class NestedTooDeeply(ValueError):
    def __init__(self) -> None:
        super().__init__(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")


def check_depth(value: Any) -> Any:
    """``value`` itself, or NestedTooDeeply if its arrays and objects nest past MAX_JSON_DEPTH."""
    level = [(value, 0)]
    while level:
        item, depth = level.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise NestedTooDeeply()
            children = item.values() if isinstance(item, dict) else item
            level.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return value


def loads(text: str | bytes) -> Any:
    """``json.loads`` refusing excessive nesting (NestedTooDeeply) as well as invalid JSON (ValueError)."""
    try:
        return check_depth(json.loads(text))
    except RecursionError:
        raise NestedTooDeeply() from None


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser with the nesting bound: a body nested too deeply is a 400 ``parse_error``."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return check_depth(super().parse(stream, media_type, parser_context))
        except (RecursionError, NestedTooDeeply):
            raise ParseError(f"JSON parse error - {NestedTooDeeply()}") from None
