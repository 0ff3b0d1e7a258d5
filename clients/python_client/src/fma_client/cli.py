"""The ``fma`` command: drive experiments from a shell, on top of ``fma_client.Developer``.

Output is a table for people and, with ``--json``, JSON for scripts. The service URL and token
come from ``--url``/``--token``, else ``FMA_URL``/``FMA_TOKEN``, else the file ``fma login`` wrote
(``$FMA_CONFIG``, default ``~/.config/fma/config.json``, readable only by you).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fma_client import __version__
from fma_client.developer import Developer
from fma_client.errors import FmaClientError
from fma_client.results import plain

EXPERIMENT_COLUMNS = [
    "id",
    "name",
    "aggregator",
    "state",
    "current_artifact",
    "clients",
    "created_on",
]
AGGREGATE_COLUMNS = [
    "id",
    "round_number",
    "parent",
    "aggregator",
    "size_bytes",
    "validation_score",
    "created_on",
]
INPUT_COLUMNS = ["update", "weight", "score", "selected", "norm", "cosine", "distance", "outlier"]
API_TOKEN_COLUMNS = ["id", "name", "created_at", "expires_at", "last_used_at", "current"]
TOKEN_COLUMNS = ["id", "created_on", "created_by", "expires_at", "max_uses", "uses", "revoked_at", "active"]
EVALUATION_COLUMNS = [
    "id",
    "round_number",
    "aggregate",
    "source",
    "client",
    "num_examples",
    "metrics",
    "created_on",
]
SUMMARY_COLUMNS = ["metric", "goal", "weighted_mean", "count", "examples", "mean", "min", "max"]
METRIC_COLUMNS = ["round", "source", "metric", "count", "examples", "weighted_mean", "mean", "min", "max"]


class UsageError(Exception):
    """A problem with how ``fma`` was called; exits with status 2."""


def config_path() -> Path:
    if os.environ.get("FMA_CONFIG"):
        return Path(os.environ["FMA_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "fma" / "config.json"


def read_config() -> dict[str, Any]:
    path = config_path()
    return json.loads(path.read_text()) if path.is_file() else {}


def write_config(config: dict[str, Any]) -> Path:
    """Save the config where only this user can read it: it holds an API token."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(config, file, indent=2)
    path.chmod(0o600)  # also when the file existed with wider permissions
    return path


# Output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return str(len(value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return text[:19].replace("T", " ") if len(text) > 19 and text[4:5] == "-" and "T" in text else text


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned columns under a header; lists show as their length, timestamps to the second."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def details(item: dict[str, Any]) -> str:
    """One resource as ``field: value`` lines; nested values as compact JSON."""
    width = max(map(len, item), default=0)
    return "\n".join(
        f"{k.ljust(width)}  {json.dumps(v, default=plain) if isinstance(v, dict | list) else _cell(v)}"
        for k, v in item.items()
    )


def emit(args: argparse.Namespace, value: Any, human: Callable[[], str]) -> None:
    print(json.dumps(value, indent=2, default=plain) if args.json else human())


# Commands


def developer(args: argparse.Namespace) -> Developer:
    config = read_config()
    url = args.url or os.environ.get("FMA_URL") or config.get("url")
    token = args.token or os.environ.get("FMA_TOKEN") or config.get("token")
    if not url or not token:
        raise UsageError("not logged in: run `fma login --url https://your-fma-service` first")
    return Developer(url, token=token, verify=args.ca_bundle or True, quiet=args.quiet or args.json)


def cmd_login(args: argparse.Namespace) -> None:
    url = args.url or os.environ.get("FMA_URL") or read_config().get("url")
    if not url:
        raise UsageError("give the service's address: fma login --url https://your-fma-service")
    verify = args.ca_bundle or True
    token = args.token or os.environ.get("FMA_TOKEN")
    if token:
        Developer(url, token=token, verify=verify).experiments(page_size=1)  # check it before saving
    else:
        username = args.username or input("Username: ")
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass()
        token = Developer.login(url, username, password, name="fma login", verify=verify).token
    path = write_config({"url": url, "token": token})
    emit(args, {"url": url, "config": str(path)}, lambda: f"Logged in to {url}; token saved in {path}")


def cmd_api_tokens(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        tokens = dev.api_tokens()
    emit(args, tokens, lambda: table(tokens, API_TOKEN_COLUMNS))


def cmd_revoke_api_token(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        dev.revoke_api_token(args.token_id)
    emit(
        args, {"revoked": args.token_id}, lambda: f"API token {args.token_id} is revoked; it no longer works."
    )


def cmd_experiments_create(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        created = dev.create_experiment(args.file)
    emit(
        args, created, lambda: f"Created experiment {created['id']} ({created['name']})\n\n{details(created)}"
    )


def cmd_experiments_list(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        rows = dev.experiments(**({"name": args.name} if args.name else {}))
    emit(args, rows, lambda: table(rows, EXPERIMENT_COLUMNS) if rows else "No experiments yet.")


def cmd_experiments_show(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        item = dev.experiment(args.experiment)
    emit(args, item, lambda: details(item))


STATE_CHANGES = {
    "pause": ("paused", "paused"),
    "resume": ("collecting", "collecting again"),
    "stop": ("stopped", "stopped"),
}


def cmd_set_state(args: argparse.Namespace) -> None:
    state, said = STATE_CHANGES[args.command]
    with developer(args) as dev:
        item = dev.set_state(args.experiment, state, reason=args.reason or "")
    reason = f" ({item['state_reason']})" if item["state_reason"] else ""
    emit(args, item, lambda: f"Experiment {item['id']} is {said}{reason}")


def cmd_aggregates(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        rows = dev.aggregates(args.experiment)
    emit(args, rows, lambda: table(rows, AGGREGATE_COLUMNS) if rows else "No rounds completed yet.")


def input_rows(aggregate: dict[str, Any]) -> list[dict[str, Any]]:
    """The updates that went into an aggregate: each one's share and, when its algorithm reported them
    (Krum, Bulyan), its score and its place in the selection ("no": not selected); in an asynchronous
    round, its staleness τ and discount s(τ)."""
    report = aggregate.get("report") or {}
    decided = report.get("aggregator") or {}
    scores = decided.get("scores") or {}
    order = {update: place for place, update in enumerate(decided.get("selected") or [], start=1)}
    stale = (report.get("staleness") or {}).get("updates") or {}
    rows = []
    for u in aggregate.get("updates", []):
        row = {
            "update": u["id"],
            "weight": f"{u['weight']:.6g}" if u["weight"] is not None else None,
            "score": f"{scores[str(u['id'])]:.6g}" if str(u["id"]) in scores else None,
            "selected": order.get(str(u["id"]), "no") if "selected" in decided else None,
            **{name: _figure(u.get(name)) for name in ("norm", "cosine", "distance")},
            "outlier": {True: "yes", False: "no"}.get(u.get("outlier")),
        }
        if str(u["id"]) in stale:
            row |= {"tau": stale[str(u["id"])]["tau"], "discount": f"{stale[str(u['id'])]['discount']:.6g}"}
        rows.append(row)
    return rows


def _figure(value: float | None) -> str | None:
    return f"{value:.6g}" if value is not None else None


def show_aggregate(aggregate: dict[str, Any]) -> str:
    """An aggregate's fields, what its algorithm decided beyond the selection, the rest of the round's
    report (the clients a sampled round selected, the norm bound, an asynchronous round's staleness mix),
    its evaluations on held-out data combined, then its inputs."""
    head = {k: v for k, v in aggregate.items() if k not in ("updates", "report", "evaluation")}
    report = aggregate.get("report") or {}
    decided = report.get("aggregator") or {}
    head |= {k: v for k, v in decided.items() if k not in ("selected", "scores")}
    head |= {  # sampling, norms, and of the updates' figures the rule (each update's are in the table)
        section: v for section, v in report.items() if section not in ("aggregator", "staleness", "updates")
    }
    measured = report.get("updates") or {}
    head |= {f"updates {k}": v for k, v in measured.items() if k != "per_update"}
    columns = INPUT_COLUMNS
    if "staleness" in report:  # the mix in the head, each update's τ and s(τ) in its row
        head["staleness"] = {k: v for k, v in report["staleness"].items() if k != "updates"}
        columns = [*INPUT_COLUMNS, "tau", "discount"]
    return f"{details(head)}\n\n{show_evaluation(aggregate)}\n\n{table(input_rows(aggregate), columns)}"


def show_evaluation(aggregate: dict[str, Any]) -> str:
    """An aggregate's combined evaluation: a line saying what it is made of, and a row per metric."""
    summary = aggregate.get("evaluation") or {}
    if not summary.get("reports"):
        return "Evaluation on held-out data: none reported yet."
    sources = ", ".join(f"{n} by {source}" for source, n in sorted(summary["sources"].items()))
    head = (
        f"Evaluation on held-out data: {summary['reports']} report(s) ({sources}) on "
        f"{summary['examples']:,} examples; weighted_mean is the combined figure"
    )
    goals = summary.get("goals") or {}
    rows = [
        {"metric": name, "goal": goals.get(name), **_significant(dict(s))}
        for name, s in summary["metrics"].items()
    ]
    return f"{head}\n{table(rows, SUMMARY_COLUMNS)}"


def _significant(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in summary.items()}


def cmd_aggregate(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        item = dev.aggregate(args.aggregate)
    emit(args, item, lambda: show_aggregate(item))


def metric_rows(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``Developer.metrics`` as one row per round, source and metric, in round order (6 significant digits)."""
    return [
        {
            "round": item["round_number"],
            "source": source,
            "metric": name,
            **_significant(summary),
        }
        for item in items
        for source in ("evaluation", "training")
        for name, summary in item[source].items()
    ]


def cmd_metrics(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        items = dev.metrics(args.experiment)
    rows = metric_rows(items)
    emit(args, items, lambda: table(rows, METRIC_COLUMNS) if rows else "No client has reported metrics yet.")


def metric_values(pairs: Sequence[str]) -> dict[str, float]:
    """``--metric NAME=VALUE`` options as a mapping (a name given twice is a mistake, not an update)."""
    metrics: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--metric {pair!r}: write NAME=VALUE, e.g. --metric accuracy=0.91")
        if name in metrics:
            raise UsageError(f"--metric {name} is given twice")
        try:
            metrics[name] = float(value)
        except ValueError:
            raise UsageError(f"--metric {pair!r}: {value!r} is not a number") from None
    return metrics


def cmd_evaluate(args: argparse.Namespace) -> None:
    metrics = metric_values(args.metric)
    with developer(args) as dev:
        evaluation = dev.report_evaluation(args.experiment, args.aggregate, metrics, args.examples)
        aggregate = dev.aggregate(args.aggregate)
    emit(
        args,
        evaluation,
        lambda: (
            f"Evaluation {evaluation['id']} of aggregate {evaluation['aggregate']} "
            f"(round {evaluation['round_number']}) recorded.\n\n{show_evaluation(aggregate)}"
        ),
    )


def cmd_evaluations(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        rows = dev.evaluations(args.experiment, aggregate=args.aggregate, source=args.source)
    shown = [{**row, "metrics": ", ".join(f"{k}={v:.6g}" for k, v in row["metrics"].items())} for row in rows]
    emit(args, rows, lambda: table(shown, EVALUATION_COLUMNS) if rows else "No evaluation reported yet.")


def cmd_enroll_token(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        issued = dev.issue_enrollment_token(
            args.experiment, expires_in=args.expires_in, max_uses=args.max_uses
        )
    emit(
        args,
        {"experiment": args.experiment, **issued},
        lambda: (
            f"{issued['token']}\n\nGive this to a data holder (shown only once). It enrolls with:\n"
            f'  Client.enroll("{dev.url}", {args.experiment}, enrollment_token="…")\n'
            f"Revoke it if it leaks: fma revoke-enroll-token {args.experiment} {issued['id']}"
        ),
    )


def cmd_enroll_tokens(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        tokens = dev.enrollment_tokens(args.experiment)
    emit(
        args,
        tokens,
        lambda: (
            table(tokens, TOKEN_COLUMNS)
            if tokens
            else f"Experiment {args.experiment} has no enrollment token."
        ),
    )


def cmd_revoke_enroll_token(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        token = dev.revoke_enrollment_token(args.experiment, args.token_id)
    emit(
        args,
        token,
        lambda: (
            f"Enrollment token {args.token_id} of experiment {args.experiment} enrolls nobody else "
            f"({token['uses']} client(s) enrolled with it stay enrolled; revoke them with `fma revoke`)."
        ),
    )


def cmd_watch(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        if not args.json:
            print(f"Watching experiment {args.experiment} for new rounds (Ctrl-C to stop)…", flush=True)
        for seen, aggregate in enumerate(
            dev.watch(args.experiment, poll_interval=args.interval, after=args.after), start=1
        ):
            if args.json:
                print(json.dumps(aggregate, default=plain), flush=True)
            else:
                print(
                    f"round {aggregate['round_number']}: aggregate {aggregate['id']} "
                    f"({aggregate['aggregator']}, {aggregate['size_bytes']:,} bytes) at {_cell(aggregate['created_on'])}",
                    flush=True,
                )
            if args.count and seen >= args.count:
                return


def cmd_publish(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        aggregate = args.aggregate
        if aggregate is None:
            done = dev.aggregates(args.experiment)
            if not done:
                raise UsageError(f"experiment {args.experiment} has no aggregate to publish yet")
            aggregate = done[0]["id"]
        artifact = dev.publish(aggregate, args.version)
    emit(args, artifact, lambda: f"Published aggregate {aggregate} as version {artifact['version']}")


def cmd_download(args: argparse.Namespace) -> None:
    output = args.output or f"experiment-{args.experiment}.safetensors"
    with developer(args) as dev:
        path = dev.download(args.experiment, output, aggregate=args.aggregate, version=args.version)
    emit(
        args,
        {"path": str(path), "bytes": path.stat().st_size},
        lambda: f"Saved {path} ({path.stat().st_size:,} bytes)",
    )


def cmd_revoke(args: argparse.Namespace) -> None:
    with developer(args) as dev:
        dev.revoke(args.experiment, args.client)
    emit(
        args,
        {"experiment": args.experiment, "revoked": args.client},
        lambda: f"Client {args.client} can no longer take part in experiment {args.experiment}",
    )


# Parser


def _common(*, suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (``suppress``: for subcommands,
    so that their defaults do not overwrite what was given before the command name)."""
    common = argparse.ArgumentParser(add_help=False)
    options = common.add_argument_group("connection and output")

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    options.add_argument("--url", default=default(None),
                         help="the FMA service, e.g. https://fma.example.org (or FMA_URL)")  # fmt: skip
    options.add_argument("--token", default=default(None),
                         help="a developer API token (or FMA_TOKEN); `fma login` saves one")  # fmt: skip
    options.add_argument("--ca-bundle", metavar="PATH", default=default(os.environ.get("FMA_CA_BUNDLE")),
                         help="CA certificates to trust for TLS (or FMA_CA_BUNDLE)")  # fmt: skip
    options.add_argument("--json", action="store_true", default=default(False),
                         help="print JSON for scripts instead of tables")  # fmt: skip
    options.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="no progress bars"
    )
    return common


def parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    top = argparse.ArgumentParser(
        prog="fma",
        description="Run federated-learning experiments on an FMA service.",
        epilog="Start with `fma login --url URL`, then `fma experiments create experiment.yaml`. "
        "`fma COMMAND --help` explains each command.",
        parents=[_common(suppress=False)],
    )
    top.add_argument("--version", action="version", version=f"fma-client {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, run: Callable[[argparse.Namespace], None], group: Any = commands):
        sub = group.add_parser(name, help=summary, description=summary, parents=[common])
        sub.set_defaults(run=run)
        return sub

    login = command("login", "Save the service URL and your API token for the next commands.", cmd_login)
    login.add_argument("--username", help="your username (asked if not given)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    command(
        "api-tokens",
        "List your API tokens (never the secrets): when each expires, when it was last used, which is this one.",
        cmd_api_tokens,
    )
    revoke_api = command("revoke-api-token", "Revoke one of your API tokens; it stops working at once.",
                         cmd_revoke_api_token)  # fmt: skip
    revoke_api.add_argument("token_id", type=int, help="the token's id (from api-tokens)")

    experiments = commands.add_parser("experiments", help="Create, list and show experiments.",
                                      description="Create, list and show experiments.")  # fmt: skip
    each = experiments.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = command(
        "create",
        "Create an experiment from a YAML or JSON file: name, aggregator and aggregator_params, "
        "round_policy, client_sampling, asynchronous, tensor_spec or initial_model (a .safetensors path), "
        "update_norm, "
        "enrollment "
        "(token|open|legacy).",
        cmd_experiments_create,
        each,
    )
    create.add_argument("file", type=Path, help="the experiment definition (.yaml, .yml or .json)")
    listing = command("list", "List your experiments, newest first.", cmd_experiments_list, each)
    listing.add_argument("--name", help="only experiments whose name contains this")
    show = command("show", "Show one experiment's settings.", cmd_experiments_show, each)
    show.add_argument("experiment", type=int, help="experiment id")

    for name, summary in (
        ("pause", "Pause an experiment's rounds (updates are still accepted)."),
        (
            "resume",
            "Resume a paused experiment's rounds (or a finished one whose finish_when no longer holds).",
        ),
        ("stop", "Stop an experiment for good: no more updates or rounds; its models stay downloadable."),
    ):
        change = command(name, summary, cmd_set_state)
        change.add_argument("experiment", type=int, help="experiment id")
        change.add_argument("--reason", help="why, kept with the state and in the event log")

    rounds = command(
        "aggregates", "List an experiment's aggregates (one per completed round).", cmd_aggregates
    )
    rounds.add_argument("experiment", type=int, help="experiment id")
    one_round = command(
        "aggregate",
        "Show one aggregate: its lineage, each update's share and, for a robust rule (krum, bulyan), its "
        "score and whether it was selected; the round's report (the clients a sampled round "
        "selected and the seed they were drawn from, the norm bound); and its evaluations on "
        "held-out data combined.",
        cmd_aggregate,
    )
    one_round.add_argument("aggregate", type=int, help="aggregate id (from aggregates)")

    evaluate = command(
        "evaluate",
        "Report your own evaluator's measure of an aggregate on held-out data: the experiment's declared "
        "metrics (its evaluation setting) and the examples measured. It counts in the aggregate's "
        "combined figure beside the clients' evaluations, weighted by examples.",
        cmd_evaluate,
    )
    evaluate.add_argument("experiment", type=int, help="experiment id")
    evaluate.add_argument("aggregate", type=int, help="the aggregate measured (from aggregates or watch)")
    evaluate.add_argument(
        "--metric", action="append", required=True, metavar="NAME=VALUE", help="e.g. accuracy=0.91; repeat"
    )
    evaluate.add_argument(
        "--examples", type=int, required=True, metavar="N", help="held-out examples it was measured on"
    )
    evaluations = command(
        "evaluations", "List the evaluations of an experiment's aggregates, newest first.", cmd_evaluations
    )
    evaluations.add_argument("experiment", type=int, help="experiment id")
    evaluations.add_argument("--aggregate", type=int, metavar="ID", help="only this aggregate's")
    evaluations.add_argument("--source", choices=["client", "developer"], help="only those from this source")

    metrics = command(
        "metrics",
        "Show the clients' reported metrics per round, combined by the server "
        "(mean weighted by examples, mean, min, max).",
        cmd_metrics,
    )
    metrics.add_argument("experiment", type=int, help="experiment id")

    token = command(
        "enroll-token", "Issue a token a data holder uses to enroll in an experiment.", cmd_enroll_token
    )
    token.add_argument("experiment", type=int, help="experiment id")
    token.add_argument(
        "--expires-in", type=int, metavar="SECONDS", help="valid for this long (default: until used up)"
    )
    token.add_argument(
        "--max-uses", type=int, metavar="N", help="how many clients may enroll with it (default: any)"
    )

    tokens = command(
        "enroll-tokens", "List an experiment's enrollment tokens (never the secrets).", cmd_enroll_tokens
    )
    tokens.add_argument("experiment", type=int, help="experiment id")

    revoke_token = command(
        "revoke-enroll-token",
        "Revoke an enrollment token so nobody else enrolls with it.",
        cmd_revoke_enroll_token,
    )
    revoke_token.add_argument("experiment", type=int, help="experiment id")
    revoke_token.add_argument(
        "token_id", type=int, help="the token's id (from enroll-token or enroll-tokens)"
    )

    watch = command("watch", "Print each round of an experiment as it completes.", cmd_watch)
    watch.add_argument("experiment", type=int, help="experiment id")
    watch.add_argument(
        "--interval", type=float, default=5.0, metavar="SECONDS", help="how often to ask (default 5)"
    )
    watch.add_argument(
        "--after",
        type=int,
        metavar="ID",
        help="also print aggregates newer than this one (default: only new rounds)",
    )
    watch.add_argument("--count", type=int, metavar="N", help="stop after N rounds (default: never)")

    publish = command("publish", "Publish an aggregate as a version of the experiment's model.", cmd_publish)
    publish.add_argument("experiment", type=int, help="experiment id")
    publish.add_argument("version", help="the version name, e.g. 1.1.0")
    publish.add_argument("--aggregate", type=int, metavar="ID", help="which aggregate (default: the latest)")

    download = command("download", "Save an experiment's model as a safetensors file.", cmd_download)
    download.add_argument("experiment", type=int, help="experiment id")
    download.add_argument(
        "-o", "--output", type=Path, help="file to write (default experiment-ID.safetensors)"
    )
    which = download.add_mutually_exclusive_group()
    which.add_argument(
        "--aggregate", type=int, metavar="ID", help="this aggregate (default: the latest model)"
    )
    which.add_argument("--version", metavar="NAME", help="this published version")

    revoke = command("revoke", "Shut a client out of an experiment.", cmd_revoke)
    revoke.add_argument("experiment", type=int, help="experiment id")
    revoke.add_argument("client", help="the client's UUID")

    from fma_client import cli_apply, cli_export  # they build on this module's helpers

    cli_apply.add_commands(command)
    cli_export.add_commands(command)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except UsageError as error:
        print(f"fma: {error}", file=sys.stderr)
        return 2
    except FmaClientError as error:
        print(f"fma: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
