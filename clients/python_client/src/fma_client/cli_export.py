"""``fma export --mlflow URI EXPERIMENT``: an experiment's rounds as an MLflow run (``fma_client.mlflow_export``).

``--follow`` keeps the run in step as rounds land, the way a training script logs as it goes: the
export runs where the developer's MLflow credentials are (``MLFLOW_TRACKING_TOKEN``, …), not in the
service, which then needs neither MLflow nor a way out to the developer's tracking server; and since
an export sends only what the run lacks, a follow that stops, or a scheduled ``fma export``, catches up.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from fma_client.cli import developer, emit


def cmd_export(args: argparse.Namespace) -> None:
    from fma_client.mlflow_export import MlflowExport  # the mlflow extra: only when exporting

    with developer(args) as dev:
        export = MlflowExport(
            dev, args.experiment, tracking_uri=args.mlflow, mlflow_experiment=args.mlflow_experiment
        )
        where = f"MLflow run {export.run_id} (experiment {export.mlflow_experiment!r}) at {args.mlflow}"
        if not args.follow:
            sent = export.sync()
            export.finish()
            emit(
                args,
                {"run_id": export.run_id, "mlflow_experiment": export.mlflow_experiment, "rounds": sent},
                lambda: f"Exported {len(sent)} round(s) of experiment {args.experiment} to {where}",
            )
            return
        if not args.json:
            print(f"Following experiment {args.experiment} into {where} (Ctrl-C to stop)…", flush=True)
        try:
            for sent in export.follow(poll_interval=args.interval, count=args.count):
                if args.json:  # one line per sync, for a script reading as it goes
                    print(json.dumps({"run_id": export.run_id, "rounds": sent}), flush=True)
                else:
                    print(f"exported round(s) {', '.join(map(str, sent)) or 'none new'}", flush=True)
        finally:
            export.finish()


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``export`` with the ``fma`` parser (``command`` is ``cli.parser``'s helper)."""
    export = command(
        "export",
        "Log an experiment's rounds to MLflow: combined metrics per round, the strategy's parameters, "
        "each aggregate's hash and version (needs the extra: pip install 'fma-client[mlflow]').",
        cmd_export,
    )
    export.add_argument(
        "--mlflow", required=True, metavar="URI", help="the MLflow tracking URI, e.g. http://127.0.0.1:5000"
    )
    export.add_argument("experiment", type=int, help="experiment id")
    export.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        help="the MLflow experiment to log into (default fma/<experiment name>)",
    )
    export.add_argument("--follow", action="store_true", help="keep exporting each round as it lands")
    export.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="with --follow: how often to ask (default 5)",
    )
    export.add_argument(
        "--count", type=int, metavar="N", help="with --follow: stop after N new rounds (default: never)"
    )
