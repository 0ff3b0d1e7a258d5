"""Terraform configuration read with python-hcl2, for the offline checks.

The AWS provider cannot be downloaded here, so `terraform validate` cannot run. These helpers
parse every `.tf` file of a module directory into a small model (variables, locals, outputs,
resources, data sources, module calls) and extract the references each expression makes, so the
tests can check the wiring that `validate` would have checked, and the security properties on top.

python-hcl2 (v8) keeps string literals quoted (`'"HTTP"'`), writes expressions as `"${...}"`,
quotes block labels, and adds `__is_block__` / `__comments__` keys; `unquote` and `attributes`
hide those details from the tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

TERRAFORM_DIR = Path(__file__).resolve().parents[2] / "terraform_deploy"

# Arguments of a `module` block that are Terraform's own, not the called module's variables.
MODULE_META_ARGUMENTS = {"source", "version", "providers", "depends_on", "count", "for_each"}

_REFERENCE_PATTERNS = {
    "var": re.compile(r"(?<![\w.])var\.([A-Za-z_][\w-]*)"),
    "local": re.compile(r"(?<![\w.])local\.([A-Za-z_][\w-]*)"),
    "module": re.compile(r"(?<![\w.])module\.([A-Za-z_][\w-]*)(?:\[[^\]]*\])?\.([A-Za-z_][\w-]*)"),
    "data": re.compile(r"(?<![\w.])data\.([A-Za-z_][\w-]*)\.([A-Za-z_][\w-]*)"),
    # Resource types all start with their provider's name; the configuration uses aws and random.
    "resource": re.compile(r"(?<![\w.])((?:aws|random)_\w+)\.([A-Za-z_][\w-]*)"),
}


@dataclass(frozen=True)
class Reference:
    kind: str  # var, local, module, data, resource
    target: tuple[str, ...]  # (name,) or (type, name) or (module, output)


@dataclass
class Module:
    """One Terraform module directory, parsed."""

    path: Path
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    data: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    module_calls: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resources_of(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {name: body for (rtype, name), body in self.resources.items() if rtype == resource_type}

    def data_of(self, data_type: str) -> dict[str, dict[str, Any]]:
        return {name: body for (dtype, name), body in self.data.items() if dtype == data_type}

    def called_module_path(self, call_name: str) -> Path:
        return (self.path / unquote(self.module_calls[call_name]["source"])).resolve()


def unquote(value: Any) -> Any:
    """A parsed string literal without its quotes; expressions and non-strings unchanged."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def attributes(body: dict[str, Any]) -> dict[str, Any]:
    """A block's arguments and nested blocks, without the parser's bookkeeping keys."""
    return {key: value for key, value in body.items() if not key.startswith("__")}


def blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The nested blocks called `name` (hcl2 gives a list of dicts, or nothing)."""
    found = body.get(name, [])
    return [found] if isinstance(found, dict) else list(found)


def parse_text(text: str, path: Path | None = None) -> Module:
    """Parse one file's text as a whole module (used by the negative fixtures)."""
    module = Module(path=path or Path("."))
    _add_file(module, hcl2.loads(text))
    return module


def load_module(path: Path) -> Module:
    """Parse every .tf file of one module directory (not its children)."""
    module = Module(path=path.resolve())
    for tf_file in sorted(path.glob("*.tf")):
        with tf_file.open() as handle:
            _add_file(module, hcl2.load(handle))
    return module


def load_tree(root: Path = TERRAFORM_DIR) -> dict[Path, Module]:
    """The root module and every local module it calls, directly or not, keyed by path."""
    modules: dict[Path, Module] = {}
    pending = [root.resolve()]
    while pending:
        path = pending.pop()
        if path in modules:
            continue
        module = modules[path] = load_module(path)
        for call in module.module_calls:
            child = module.called_module_path(call)
            if child.is_dir():
                pending.append(child)
    return modules


def _add_file(module: Module, parsed: dict[str, Any]) -> None:
    for block in parsed.get("variable", []):
        for name, body in block.items():
            module.variables[unquote(name)] = body
    for block in parsed.get("output", []):
        for name, body in block.items():
            module.outputs[unquote(name)] = body
    for block in parsed.get("locals", []):
        module.locals.update(attributes(block))
    for block in parsed.get("module", []):
        for name, body in block.items():
            module.module_calls[unquote(name)] = body
    for kind, target in (("resource", module.resources), ("data", module.data)):
        for block in parsed.get(kind, []):
            for rtype, named in block.items():
                for name, body in named.items():
                    target[(unquote(rtype), unquote(name))] = body


def expressions(value: Any) -> Iterator[str]:
    """Every `${...}` expression inside a parsed value (comments and bookkeeping skipped)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not key.startswith("__"):
                yield from expressions(item)
    elif isinstance(value, list):
        for item in value:
            yield from expressions(item)
    elif isinstance(value, str):
        yield from _interpolations(value)


def _interpolations(text: str) -> Iterator[str]:
    start = text.find("${")
    while start != -1:
        depth, index = 0, start + 1
        while index < len(text):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    break
            index += 1
        yield text[start + 2 : index]
        start = text.find("${", index)


def references(value: Any) -> set[Reference]:
    """What a parsed value refers to: variables, locals, module outputs, data sources, resources."""
    found: set[Reference] = set()
    for expression in expressions(value):
        for kind, pattern in _REFERENCE_PATTERNS.items():
            for match in pattern.finditer(expression):
                found.add(Reference(kind, match.groups()))
    return found


def required_variables(module: Module) -> set[str]:
    return {name for name, body in module.variables.items() if "default" not in body}


def documentation_errors(module: Module) -> list[str]:
    """Variables without a type or description, outputs without a description."""
    errors = []
    for name, body in module.variables.items():
        if "type" not in body:
            errors.append(f"{module.path.name}: variable {name} has no type")
        if not str(unquote(body.get("description", ""))).strip():
            errors.append(f"{module.path.name}: variable {name} has no description")
    for name, body in module.outputs.items():
        if not str(unquote(body.get("description", ""))).strip():
            errors.append(f"{module.path.name}: output {name} has no description")
    return errors


def wiring_errors(module: Module, tree: dict[Path, Module]) -> list[str]:
    """Everything `terraform validate` would reject about names: dangling references, and module
    calls that pass unknown arguments or miss required ones."""
    errors: list[str] = []
    everything = {
        "variables": module.variables,
        "outputs": module.outputs,
        "locals": module.locals,
        "resources": module.resources,
        "data": module.data,
        "module_calls": module.module_calls,
    }
    for section, entries in everything.items():
        for name, body in entries.items():
            where = f"{module.path.name}: {section} {name}"
            for ref in references(body):
                problem = _dangling(module, tree, ref)
                if problem:
                    errors.append(f"{where}: {problem}")

    for call, body in module.module_calls.items():
        child_path = module.called_module_path(call)
        child = tree.get(child_path)
        if child is None:
            errors.append(f"{module.path.name}: module {call}: source {child_path} is not a module directory")
            continue
        passed = set(attributes(body)) - MODULE_META_ARGUMENTS
        for unknown in sorted(passed - set(child.variables)):
            errors.append(
                f"{module.path.name}: module {call} passes {unknown}, which {child_path.name} does not declare"
            )
        for missing in sorted(required_variables(child) - passed):
            errors.append(f"{module.path.name}: module {call} misses required variable {missing}")
    return errors


def _dangling(module: Module, tree: dict[Path, Module], ref: Reference) -> str | None:
    if ref.kind == "var" and ref.target[0] not in module.variables:
        return f"var.{ref.target[0]} is not declared"
    if ref.kind == "local" and ref.target[0] not in module.locals:
        return f"local.{ref.target[0]} is not defined"
    if ref.kind == "resource" and ref.target not in module.resources:
        return f"resource {'.'.join(ref.target)} does not exist"
    if ref.kind == "data" and ref.target not in module.data:
        return f"data.{'.'.join(ref.target)} does not exist"
    if ref.kind == "module":
        call, output = ref.target
        if call not in module.module_calls:
            return f"module.{call} is not called here"
        child = tree.get(module.called_module_path(call))
        if child is not None and output not in child.outputs:
            return f"module.{call}.{output} is not an output of {child.path.name}"
    return None
