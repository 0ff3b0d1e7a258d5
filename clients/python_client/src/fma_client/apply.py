"""Keep a service in step with a folder of experiment files: what ``fma plan`` and ``fma apply`` run.

Each file declares one experiment (``schemas/experiment.schema.json``); its ``name`` finds the
experiment among the developer's own (names are unique per developer). A field a file leaves out
takes the schema's default, so deleting a line resets that setting, except ``tensor_spec`` (fixed
by the initial model when left out) and ``initial_model`` (read only to create).

Whether the service can make a change is the service's to say: the plan asks it with ``dry_run``
(``Developer.check_new_experiment`` / ``check_experiment_change``), so the rules of what a running
experiment can take live in one place, and the plan shows the value the service would store.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from fma_client.developer import Developer, load_definition, to_request
from fma_client.errors import ConflictError, FmaClientError, ValidationError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "experiment.schema.json"
SUFFIXES = (".yaml", ".yml", ".json")
# Kept as the service has it when a file leaves it out (see the module's docstring).
NOT_RESET = {"tensor_spec", "initial_model", "enrollment"}

Action = Literal["create", "change", "pause", "unchanged", "refused"]


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of an experiment file (shipped for editors, and the source of the defaults)."""
    return json.loads(SCHEMA_PATH.read_text())


def defaults() -> dict[str, Any]:
    """What each field is when a file leaves it out, as the service's own defaults."""
    return {
        name: spec["default"]
        for name, spec in schema()["properties"].items()
        if "default" in spec and name not in NOT_RESET
    }


@dataclass(frozen=True)
class Declared:
    """One experiment file: where it is and what it says."""

    path: Path
    definition: dict[str, Any]

    @property
    def name(self) -> str:
        return self.definition["name"]


def _files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    files = []
    for given in map(Path, paths):
        if given.is_dir():
            files += sorted(p for p in given.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif given.is_file():
            files.append(given)
        else:
            raise ValidationError(f"{given}: no such file or folder")
    return files


def _check(path: Path, definition: Mapping[str, Any]) -> None:
    known = schema()["properties"]
    for key in definition:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValidationError(
                f"{path}: unknown field {key!r}{hint}; the fields are in {SCHEMA_PATH.name}"
            )
    name = definition.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"{path}: `name` is required: a non-empty string that names the experiment")


def load_declarations(paths: Iterable[str | os.PathLike]) -> list[Declared]:
    """The experiments the files declare (a folder: its .yaml/.yml/.json files, not its subfolders),
    checked for unknown fields and for two files claiming one name before anything is sent."""
    declared: list[Declared] = []
    seen: dict[str, Path] = {}
    for path in _files(paths):
        definition = load_definition(path)
        _check(path, definition)
        if definition["name"] in seen:
            raise ValidationError(
                f"{path} and {seen[definition['name']]} both declare an experiment named {definition['name']!r}"
            )
        seen[definition["name"]] = path
        declared.append(Declared(path, definition))
    if not declared:
        raise ValidationError(f"no experiment files ({', '.join(SUFFIXES)}) in {', '.join(map(str, paths))}")
    return declared


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Step:
    """What the plan does to one experiment, and for a change or a pause the body it will send."""

    action: Action
    name: str
    experiment: int | None = None
    source: Path | None = None
    changes: tuple[FieldChange, ...] = ()
    reason: str = ""
    send: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "name": self.name,
            "experiment": self.experiment,
            "source": str(self.source) if self.source else None,
            "changes": [{"field": c.field, "old": c.old, "new": c.new} for c in self.changes],
            **({"reason": self.reason} if self.reason else {}),
        }


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    def count(self, action: Action) -> int:
        return sum(step.action == action for step in self.steps)

    @property
    def refused(self) -> bool:
        return any(step.action == "refused" for step in self.steps)

    @property
    def pending(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action in {"create", "change", "pause"})

    def summary(self) -> dict[str, int]:
        return {
            action: self.count(action) for action in ("create", "change", "pause", "unchanged", "refused")
        }


def _refusal(error: FmaClientError) -> bool:
    """A refusal of this experiment's content (the plan reports it and goes on); anything else, such
    as an expired token or an unreachable service, ends the plan."""
    return isinstance(error, ValidationError | ConflictError) or error.status_code == 413


def _plan_create(dev: Developer, declared: Declared) -> Step:
    try:
        dev.check_new_experiment(declared.path)
    except FmaClientError as error:
        if not _refusal(error):
            raise
        return Step("refused", declared.name, source=declared.path, reason=str(error))
    shown = {**defaults(), **declared.definition}
    changes = tuple(FieldChange(k, None, v) for k, v in shown.items() if k != "name")
    return Step("create", declared.name, source=declared.path, changes=changes)


def desired(declared: Declared) -> dict[str, Any]:
    """The settings an existing experiment should have: the defaults, then what the file says."""
    definition = {k: v for k, v in declared.definition.items() if k != "initial_model"}
    return {**defaults(), **to_request(definition)}


def _plan_change(dev: Developer, declared: Declared, current: Mapping[str, Any]) -> Step:
    want = {k: v for k, v in desired(declared).items() if current.get(k) != v}
    base = {"name": declared.name, "experiment": current["id"], "source": declared.path}
    if not want:
        return Step("unchanged", **base)
    try:
        would = dev.check_experiment_change(current["id"], **want)
    except FmaClientError as error:
        if not _refusal(error):
            raise
        return Step("refused", **base, reason=str(error))
    changes = tuple(
        FieldChange(k, current.get(k), would.get(k)) for k in want if would.get(k) != current.get(k)
    )
    return Step("change", **base, changes=changes, send=want) if changes else Step("unchanged", **base)


def _plan_pause(dev: Developer, current: Mapping[str, Any]) -> Step:
    base = {"name": current["name"], "experiment": current["id"]}
    try:
        dev.check_experiment_change(current["id"], allow_aggregation=False)
    except FmaClientError as error:
        if not _refusal(error):
            raise
        return Step("refused", **base, reason=str(error))
    change = FieldChange("allow_aggregation", True, False)
    return Step("pause", **base, changes=(change,), send={"allow_aggregation": False})


def make_plan(dev: Developer, declared: Sequence[Declared], *, prune: bool = False) -> Plan:
    """What applying the files would do, each step checked by the service, nothing changed.

    ``prune``: also pause (``allow_aggregation: false``) your own experiments that no file declares.
    """
    existing = {row["name"]: row for row in dev.experiments(mine="true")}  # a staff user sees others' too
    steps = [
        _plan_change(dev, d, existing[d.name]) if d.name in existing else _plan_create(dev, d)
        for d in declared
    ]
    if prune:
        names = {d.name for d in declared}
        steps += [
            _plan_pause(dev, row)
            for name, row in sorted(existing.items())
            if name not in names and row["allow_aggregation"]
        ]
    return Plan(tuple(steps))


def apply_plan(dev: Developer, plan: Plan) -> list[dict[str, Any]]:
    """Carry out a plan that has no refusal, step by step; returns each experiment as it is now.

    A step the service refuses now (someone changed the experiment since the plan) raises, leaving
    the steps before it done: applying again picks up from there, since done steps plan as unchanged.
    """
    if plan.refused:
        raise ValidationError("the plan has refused steps; fix them (see `fma plan`) before applying")
    done = []
    for step in plan.pending:
        if step.action == "create":
            done.append(dev.create_experiment(step.source))
        else:
            done.append(dev.update_experiment(step.experiment, **step.send))
    return done
