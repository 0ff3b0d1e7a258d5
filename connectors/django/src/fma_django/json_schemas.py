"""The JSON Schemas an experiment holds (``update_schema``, ``metrics_schema``,
``client_agg_results_schema``): checked when a developer sets one, applied to what clients send.

A developer writes the schema and the service applies it to clients' input, so a schema must not
be able to make the service do anything but compare. Each rule below is checked when the schema is
set (a 400 naming the fault) and again, by itself, every time it is applied, so a schema stored
before the rules existed is refused there too (``invalid_schema``) instead of doing harm:

- Nothing is ever fetched. ``$ref`` (and ``$dynamicRef``, ``$recursiveRef``) may only be ``#`` or
  a JSON pointer into the same schema (``#/$defs/name``). Validation resolves references in a
  ``referencing.Registry`` that has no way to retrieve, so even a ``file://`` or ``http://``
  reference stored earlier cannot read a file or reach an address from the server.
- Every reference resolves, and no chain of references and ``allOf``/``anyOf``/``not``… comes back
  to where it started without descending into the value (``{"$ref": "#"}`` would recurse without
  end; a tree that refers to itself through ``properties`` or ``items`` is fine). The schema's
  size once references are followed is bounded (``MAX_EXPANDED_SUBSCHEMAS``): a few lines of
  ``allOf`` over ``$ref`` cannot stand for billions of checks of each push.
- Regular expressions (``pattern``, ``patternProperties`` and, through its keys,
  ``additionalProperties``) run in RE2, whose matching time is linear in the input, so a pattern
  that backtracks exponentially in Python's ``re`` (``^(a+)+$``) costs microseconds. Patterns RE2
  cannot run (backreferences, look-around) are refused: a service that runs strangers' input
  through tenants' patterns cannot afford a backtracking engine, and a time limit would still
  spend a worker's time on every push. ``unevaluatedProperties`` beside ``patternProperties`` is
  refused because jsonschema evaluates that pair with ``re``. ``format`` is an annotation here
  (no format is asserted), so ``format: regex`` compiles nothing.
- Whatever the schema, checking a value costs at most ``MIN_STEPS + STEPS_PER_NODE`` × its JSON
  nodes keyword evaluations (a pattern costs one more per 256 characters it reads); past that the
  value is refused (``schema_too_costly``). Branches that each recurse into the same child double
  the work at every level of the value, which no check of the schema alone can rule out without
  refusing ordinary trees. ``uniqueItems`` compares canonical JSON in a set, not pair by pair.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import re2
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema.exceptions import ValidationError, best_match

from fma_django.errors import ValidationFailed

SCHEMA_FIELDS = ("update_schema", "metrics_schema", "client_agg_results_schema")
# Far above any schema written by hand (hundreds of subschemas), far below a DoS.
MAX_EXPANDED_SUBSCHEMAS = 10_000
# Keyword evaluations one check may spend. Usual schemas spend 2-5 per JSON value (a metrics object:
# tens); the floor costs a worker 0.1-0.3 s (5-15 µs a step, references being the dearest).
MIN_STEPS = 20_000
STEPS_PER_NODE = 20

_LOCAL_REF = re.compile(r"#(/.*)?", re.DOTALL)
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
# Keywords whose subschemas apply to the same value (in place) or to a part of it (descending).
_IN_PLACE = {"not", "if", "then", "else", "allOf", "anyOf", "oneOf", "dependentSchemas", "dependencies"}
_DESCENDING = {
    "properties",
    "patternProperties",
    "additionalProperties",
    "propertyNames",
    "unevaluatedProperties",
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "unevaluatedItems",
}
_CONTAINERS = {"$defs", "definitions"}  # hold subschemas that apply only where a $ref names them
_NO_RETRIEVAL = referencing.Registry()  # retrieving any URI raises NoSuchResource
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_VERDICTS: dict[str, str | None] = {}  # SHA-256 of a schema's canonical JSON → its problem (None: usable)
_UNKNOWN = object()
_STEPS_LEFT: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "fma_schema_steps", default=None
)


class Unusable(Exception):
    """Why a schema cannot be applied safely (the message names the keyword or reference)."""


class _OverBudget(Exception):
    """Checking one value took more keyword evaluations than its size allows."""


def schema_check(*, field: str, schema: Any) -> None:
    """Refuse a schema the service could not apply safely; ``field`` names it in the 400."""
    problem = _problem(schema)
    if problem:
        raise ValidationFailed(f"{field}: {problem}", code="invalid_schema")


def schema_validate(*, field: str, schema: Any, value: Any, what: str) -> None:
    """Check ``value`` (``what``: the name the client knows it by) against the experiment's ``field``.

    A stored schema that breaks the rules is refused before anything runs: the client learns
    that the experiment, not its input, is at fault.
    """
    problem = _problem(schema)
    error = None
    if problem is None:
        budget = MIN_STEPS + STEPS_PER_NODE * _nodes(value)
        token = _STEPS_LEFT.set([budget])
        try:
            error = best_match(_validator(schema).iter_errors(value))
        except _OverBudget:
            raise ValidationFailed(
                f"{what} could not be checked against the experiment's {field} within {budget:,} steps "
                "(a bound linear in its size): the schema does too much work for values like this one",
                code="schema_too_costly",
            ) from None
        except (referencing.exceptions.Unresolvable, RecursionError) as failure:  # kept from harm above
            problem = f"it could not be applied ({type(failure).__name__})"
        finally:
            _STEPS_LEFT.reset(token)
    if problem is not None:
        raise ValidationFailed(
            f"the experiment's {field} cannot be used, so nothing is accepted until its developer "
            f"changes it: {problem}",
            code="invalid_schema",
        )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise ValidationFailed(
            f"{what} does not match the experiment's schema{f' at {where}' if where else ''}: {error.message}",
            code="schema_mismatch",
        )


def _nodes(value: Any) -> int:
    """How many JSON values ``value`` holds, itself included."""
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        count += 1
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return count


def _problem(schema: Any) -> str | None:
    """What makes the schema unusable, if anything; remembered per schema, as every push asks."""
    digest = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()
    verdict = _VERDICTS.get(digest, _UNKNOWN)
    if verdict is _UNKNOWN:
        verdict = _find_problem(schema)
        if len(_VERDICTS) >= 1024:
            _VERDICTS.clear()
        _VERDICTS[digest] = verdict
    return verdict


def _find_problem(schema: Any) -> str | None:
    try:
        base = _dialect(schema)
        try:
            base.check_schema(schema, format_checker=None)  # patterns are checked by RE2 below
        except jsonschema.SchemaError as error:
            raise Unusable(f"not a JSON Schema: {error.message}") from None
        _Walk(schema, base).check()
    except Unusable as problem:
        return str(problem)
    except RecursionError:
        return "it is nested too deeply"
    return None


def _dialect(schema: Any) -> type[jsonschema.protocols.Validator]:
    if isinstance(schema, bool):
        return jsonschema.Draft202012Validator
    if not isinstance(schema, dict):
        raise Unusable(f"a schema is a JSON object or a boolean, not {type(schema).__name__}")
    dialect = schema.get("$schema")
    if dialect is None:
        return jsonschema.Draft202012Validator
    known = jsonschema.validators.validator_for(schema, default=None) if isinstance(dialect, str) else None
    if known is None or known is jsonschema.Draft3Validator:
        raise Unusable(
            f"$schema {dialect!r} is not a dialect this service applies: use draft-04 to 2020-12 "
            "(leave $schema out for 2020-12); nothing is fetched to learn another"
        )
    return known


def _regex(pattern: Any, keyword: str) -> Any:
    if not isinstance(pattern, str):
        raise Unusable(f"{keyword} {pattern!r} is not a string")
    try:
        return re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as error:
        reason = error.args[0].decode(errors="replace") if error.args else "not valid"
        raise Unusable(
            f"{keyword} '{pattern}' cannot run in RE2, the linear-time engine every pattern runs in "
            f"({reason}): backreferences and look-around are not supported"
        ) from None


class _Walk:
    """Every subschema reachable from the root, through keywords and references, with its edges.

    Nodes are subschema objects (by identity); an edge is in place when the subschema applies to
    the same value (``$ref``, ``allOf``…) and descending when it applies to a part of it.
    """

    def __init__(self, schema: Any, base: type[jsonschema.protocols.Validator]) -> None:
        self.specification = referencing.jsonschema.specification_with(base.ID_OF(base.META_SCHEMA))
        self.base = base
        self.root = schema
        self.edges: dict[int, list[tuple[int, bool, str]]] = {}
        self.checked_targets: set[int] = set()
        self.keywords: set[str] = set()

    def check(self) -> None:
        if isinstance(self.root, bool):
            return
        resolver = _NO_RETRIEVAL.resolver_with_root(self.specification.create_resource(self.root))
        root = self._visit(self.root, resolver)
        if {"unevaluatedProperties", "patternProperties"} <= self.keywords:
            raise Unusable(
                "unevaluatedProperties cannot be used with patternProperties (jsonschema would match "
                "those patterns with Python's backtracking re): use additionalProperties"
            )
        self._refuse_cycles()
        if self._expanded(root, {}, set()) > MAX_EXPANDED_SUBSCHEMAS:
            raise Unusable(
                f"following its references it stands for more than {MAX_EXPANDED_SUBSCHEMAS:,} "
                "subschemas, each checked on every value: share less through $ref"
            )

    def _visit(self, node: Any, resolver: referencing.Resolver) -> int:
        key = id(node)
        if key in self.edges or isinstance(node, bool):
            return key
        edges = self.edges[key] = []
        if node is not self.root and self.specification.id_of(node):
            resolver = resolver.in_subresource(self.specification.create_resource(node))
        self.keywords.update(node)
        if "pattern" in node:
            _regex(node["pattern"], "pattern")
        for pattern in node.get("patternProperties", {}):
            _regex(pattern, "patternProperties key")
        for keyword, value in node.items():
            if keyword in _REF_KEYWORDS and isinstance(value, str):
                target, target_resolver = self._resolve(value, resolver)
                edges.append((self._visit(target, target_resolver), True, value))
            elif keyword in _IN_PLACE or keyword in _DESCENDING or keyword in _CONTAINERS:
                for child in _subschemas(keyword, value):
                    child_key = self._visit(child, resolver)
                    if keyword not in _CONTAINERS:
                        edges.append((child_key, keyword in _IN_PLACE, keyword))
        return key

    def _resolve(self, ref: str, resolver: referencing.Resolver) -> tuple[Any, referencing.Resolver]:
        if not _LOCAL_REF.fullmatch(ref):
            raise Unusable(
                f"$ref {ref!r} is not a reference inside this schema: only '#' and JSON pointers such "
                "as '#/$defs/name' are allowed, and nothing is ever fetched"
            )
        try:
            resolved = resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            raise Unusable(f"$ref {ref!r} points to nothing in this schema") from None
        target = resolved.contents
        if not isinstance(target, dict | bool):
            raise Unusable(f"$ref {ref!r} points to {json.dumps(target)[:60]}, not a schema")
        if id(target) not in self.checked_targets:  # a target outside the keywords check_schema reads
            self.checked_targets.add(id(target))
            try:
                self.base.check_schema(target, format_checker=None)
            except jsonschema.SchemaError as error:
                raise Unusable(
                    f"$ref {ref!r} points to something that is not a schema: {error.message}"
                ) from None
        return target, resolved.resolver

    def _refuse_cycles(self) -> None:
        """A cycle of in-place edges applies the same subschemas to the same value forever."""
        done: set[int] = set()
        for start in self.edges:
            if start not in done:
                self._refuse_cycle_from(start, done)

    def _refuse_cycle_from(self, start: int, done: set[int]) -> None:
        path = [(start, "")]
        stack = [iter(self._in_place(start))]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                done.add(path.pop()[0])
                continue
            target, label = following
            keys = [key for key, _ in path]
            if target in keys:
                labels = [step for _, step in path[keys.index(target) + 1 :]] + [label]
                raise Unusable(
                    f"{' → '.join(labels)} leads back to where it started without descending into "
                    "the value, so checking a value would never end"
                )
            if target not in done:
                path.append((target, label))
                stack.append(iter(self._in_place(target)))

    def _in_place(self, key: int) -> list[tuple[int, str]]:
        return [(target, label) for target, in_place, label in self.edges.get(key, []) if in_place]

    def _expanded(self, key: int, sizes: dict[int, int], active: set[int]) -> int:
        """How many subschemas the root stands for once references are followed (recursion counts once)."""
        if key in sizes:
            return sizes[key]
        if key in active:
            return 1
        active.add(key)
        size = 1
        for target, _, _ in self.edges.get(key, []):
            size += self._expanded(target, sizes, active)
            if size > MAX_EXPANDED_SUBSCHEMAS:
                break
        active.discard(key)
        sizes[key] = size
        return size


def _subschemas(keyword: str, value: Any) -> Iterator[Any]:
    if isinstance(value, dict) and keyword in {"properties", "patternProperties", "dependentSchemas"} | (
        _CONTAINERS | {"dependencies"}
    ):
        candidates = value.values()
    elif isinstance(value, list):
        candidates = value
    else:
        candidates = [value]
    yield from (c for c in candidates if isinstance(c, dict | bool))


# Validation: jsonschema's own validators with the three keywords that match patterns run in RE2.


def _spend(steps: int = 1) -> None:
    left = _STEPS_LEFT.get()
    if left is not None:
        left[0] -= steps
        if left[0] < 0:
            raise _OverBudget


def _counted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    def counted(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _spend()
        return keyword(validator, value, instance, schema)

    return counted


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string"):
        _spend(len(instance) // 256)
        if _regex(pattern, "pattern").search(instance) is None:
            yield ValidationError(f"{instance[:80]!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict, instance: Any, schema: dict
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = _regex(pattern, "patternProperties key")
        for name, value in instance.items():
            _spend(len(name) // 256)
            if regex.search(name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    regexes = [_regex(p, "patternProperties key") for p in schema.get("patternProperties", {})]
    _spend(len(regexes) * sum(len(name) // 256 for name in instance))
    extras = [n for n in instance if n not in known and not any(r.search(n) for r in regexes)]
    if validator.is_type(additional, "object"):
        for name in extras:
            yield from validator.descend(instance[name], additional, path=name)
    elif additional is False and extras:
        yield ValidationError(
            f"additional properties are not allowed: {', '.join(map(repr, sorted(extras)))}"
        )


def _unique_items(validator: Any, unique: Any, instance: Any, schema: dict) -> Iterator[ValidationError]:
    if unique is True and validator.is_type(instance, "array"):
        seen: set[str] = set()
        for index, item in enumerate(instance):
            canonical = json.dumps(_number_normal(item), sort_keys=True)
            if canonical in seen:
                yield ValidationError(
                    f"the array has non-unique elements: item {index} repeats an earlier one"
                )
                return
            seen.add(canonical)


def _number_normal(value: Any) -> Any:
    """``value`` with whole floats as ints: JSON Schema holds 1 and 1.0 equal (and true apart from 1)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _number_normal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_number_normal(item) for item in value]
    return value


@functools.cache
def _linear(base: type[jsonschema.protocols.Validator]) -> type[jsonschema.protocols.Validator]:
    """``base`` with patterns in RE2, ``uniqueItems`` by hashing, and every keyword counted (``_spend``)."""
    keywords = {
        **base.VALIDATORS,
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "uniqueItems": _unique_items,
    }
    return jsonschema.validators.extend(base, {name: _counted(check) for name, check in keywords.items()})


def _validator(schema: Any) -> jsonschema.protocols.Validator:
    return _linear(_dialect(schema))(schema, registry=_NO_RETRIEVAL)
