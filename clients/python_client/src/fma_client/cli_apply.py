"""``fma plan`` and ``fma apply -f DIR|FILE``: a folder of experiment files kept in git, the service kept in step.

``plan`` prints what ``apply`` would create, change (field by field, as the service would store it),
pause (``--prune``) or leave alone, and what the service refuses with its reason; it exits 1 when
something is refused, so a CI check on a pull request fails before the change is merged.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fma_client.apply import Plan, Step, apply_plan, load_declarations, make_plan
from fma_client.cli import developer, emit
from fma_client.errors import ValidationError

SYMBOLS = {"create": "+", "change": "~", "pause": "-", "unchanged": "=", "refused": "!"}
WIDEST = 100


def _value(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= WIDEST else text[: WIDEST - 1] + "…"


def _step(step: Step) -> list[str]:
    where = f"  ({step.source})" if step.source else "  (declared by no file)"
    number = f" #{step.experiment}" if step.experiment is not None else ""
    lines = [f"{SYMBOLS[step.action]} {step.action} {step.name!r}{number}{where}"]
    for change in step.changes:
        if step.action == "create":
            lines.append(f"    {change.field}: {_value(change.new)}")
        else:
            lines.append(f"    {change.field}: {_value(change.old)} -> {_value(change.new)}")
    if step.reason:
        lines.append(f"    refused: {step.reason}")
    return lines


PLANNED = {"create": "to create", "change": "to change", "pause": "to pause"}
DONE = {"create": "created", "change": "changed", "pause": "paused"}


def describe(plan: Plan, *, applied: bool = False) -> str:
    """The plan step by step, then its counts (``applied``: as done rather than to do)."""
    counts = plan.summary()
    labels = {**(DONE if applied else PLANNED), "unchanged": "unchanged", "refused": "refused"}
    summary = ", ".join(f"{counts[action]} {label}" for action, label in labels.items())
    body = [line for step in plan.steps for line in _step(step)]
    return "\n".join([*body, "", f"{'Applied' if applied else 'Plan'}: {summary}."])


def _plan(args: argparse.Namespace, dev: Any) -> Plan:
    return make_plan(dev, load_declarations(args.paths), prune=args.prune)


def _refused(plan: Plan) -> ValidationError:
    return ValidationError(
        f"{plan.count('refused')} experiment(s) refused by the service (see above); nothing was changed"
    )


def cmd_plan(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        plan = _plan(args, dev)
    emit(
        args, {"steps": [s.as_json() for s in plan.steps], "summary": plan.summary()}, lambda: describe(plan)
    )
    if plan.refused:
        raise _refused(plan)


def cmd_apply(args: argparse.Namespace) -> None:
    if args.dry_run:
        cmd_plan(args)
        return
    with developer(args) as dev:
        plan = _plan(args, dev)
        if plan.refused:
            emit(
                args,
                {"steps": [s.as_json() for s in plan.steps], "summary": plan.summary()},
                lambda: describe(plan),
            )
            raise _refused(plan)
        done = apply_plan(dev, plan)
    emit(
        args,
        {
            "steps": [s.as_json() for s in plan.steps],
            "summary": plan.summary(),
            "applied": [e["id"] for e in done],
        },
        lambda: describe(plan, applied=True),
    )


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``plan`` and ``apply`` with the ``fma`` parser (``command`` is ``cli.parser``'s helper)."""
    for name, summary, run in (
        (
            "plan",
            "Show what `fma apply` would change on the service, refusals included; change nothing.",
            cmd_plan,
        ),
        (
            "apply",
            "Create, change (and with --prune pause) experiments so the service matches the files.",
            cmd_apply,
        ),
    ):
        sub = command(name, summary, run)
        sub.add_argument(
            "-f",
            "--filename",
            dest="paths",
            type=Path,
            action="append",
            required=True,
            metavar="DIR|FILE",
            help="an experiment file, or a folder of them (.yaml, .yml, .json); repeat for more",
        )
        sub.add_argument(
            "--prune",
            action="store_true",
            help="also pause (allow_aggregation: false) your experiments that no file declares",
        )
        if name == "apply":
            sub.add_argument("--dry-run", action="store_true", help="only show the plan (as `fma plan`)")
