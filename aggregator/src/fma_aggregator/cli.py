"""``fma-aggregator``: run rounds now, run a standalone worker, or see where rounds stand.

Settings come from the environment (see ``fma_aggregator.config`` and the service's
``fma_service.settings``: ``FMA_DATABASE_URL``, ``FMA_DATA_DIR``, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence

from fma_aggregator.django_setup import setup_django

DESCRIPTION = """Run FMA's aggregation rounds. Every round is claimed under a lease, so any number of
workers (this command, Celery workers, the API's in-process runner, Lambda) can run side by side:
each round still runs exactly once."""

EPILOG = """examples:
  fma-aggregator run-once                  sweep, check every upload waiting for its check, run
                                           every round that is ready now, then exit
  fma-aggregator run-once --experiment 3   run experiment 3's round if it is ready
  fma-aggregator worker                    keep running rounds (sweeps every FMA_SWEEP_SECONDS)
  fma-aggregator status --json             pending / running / failed rounds per experiment

Celery workers are started by Celery itself: celery -A fma_aggregator worker -B"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fma-aggregator",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    once = commands.add_parser(
        "run-once",
        help="sweep, check waiting uploads and run the rounds that are ready now, in this process, and exit",
        description="Sweep as every runner does (expire upload sessions left open, prune old update bytes, "
        "remove old bytes no record references), then check, in this process, every upload completed "
        "above FMA_UPLOAD_INLINE_CHECK_BYTES "
        "and still waiting for its check (the only way they are checked with FMA_AGGREGATOR_RUNNER=none), "
        "then run the round of every experiment with pending updates and no live lease (or only "
        "--experiment's), if its round policy is met. Exits 1 if a round failed.",
    )
    once.add_argument("--experiment", metavar="ID", help="only this experiment")
    once.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    worker = commands.add_parser(
        "worker",
        help="run rounds in the foreground until stopped (the in-process runner, standalone)",
        description="Sweep every --sweep-seconds for experiments whose round may be ready (pending "
        "updates, a passed deadline, a lease left by a dead worker) and run them. Stop with Ctrl-C "
        "or SIGTERM; the round in progress finishes first.",
    )
    worker.add_argument(
        "--sweep-seconds",
        type=float,
        metavar="S",
        help="seconds between sweeps (default FMA_SWEEP_SECONDS, 60)",
    )
    status = commands.add_parser(
        "status",
        help="pending, running and failed rounds per experiment",
        description="For each experiment: rounds completed, updates pending and quarantined, the round "
        "running now (worker, lease left) and rounds failed since the last one completed.",
    )
    status.add_argument("--experiment", metavar="ID", help="only this experiment")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    setup_django()
    return {"run-once": _run_once, "worker": _worker, "status": _status}[args.command](args)


def _run_once(args: argparse.Namespace) -> int:
    from fma_aggregator.checks import run_check, run_unmask
    from fma_aggregator.config import AggregatorConfig
    from fma_aggregator.engine import build_engine
    from fma_django.housekeeping import housekeeping_sweep, uploads_checking
    from fma_django.secure_rounds import secure_rounds_summing
    from fma_django.store import DjangoMetadataStore

    config = AggregatorConfig.from_env()
    housekeeping_sweep(lease_seconds=config.lease_seconds)
    for upload_id in uploads_checking():  # first: an accepted update may make a round ready
        run_check(upload_id)
    for round_id in secure_rounds_summing():
        run_unmask(round_id)
    engine = build_engine(config)
    targets = (
        [args.experiment] if args.experiment else DjangoMetadataStore().experiments_to_sweep(now=time.time())
    )
    outcomes = [engine.run_round(str(target)).to_dict() for target in targets]
    if args.json:
        print(json.dumps(outcomes, indent=2))
    else:
        for outcome in outcomes:
            detail = (
                f"round {outcome['round']}, {outcome['updates']} updates"
                if outcome["round"]
                else outcome["reason"]
            )
            print(f"experiment {outcome['experiment_id']}: {outcome['status']} ({detail})")
        if not outcomes:
            print("no experiment has pending updates")
    return 1 if any(o["status"] == "failed" for o in outcomes) else 0


def _worker(args: argparse.Namespace) -> int:
    from fma_aggregator.config import AggregatorConfig
    from fma_aggregator.runners import inprocess_runner

    # The process's own runner, so that what its checks and sweeps announce in-process comes back to it.
    runner = inprocess_runner(AggregatorConfig.from_env())
    if args.sweep_seconds:
        runner.sweep_seconds = args.sweep_seconds

    def stop(signum: int, frame: object) -> None:
        logging.getLogger(__name__).info("stopping after the current round")
        runner.stop(timeout=0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger(__name__).info("worker started; sweeping every %s s", runner.sweep_seconds)
    runner.run_forever()
    return 0


def _status(args: argparse.Namespace) -> int:
    from fma_aggregator.status import round_statuses

    statuses = round_statuses(now=time.time(), experiment_id=args.experiment)
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
        return 0
    header = f"{'ID':>5}  {'NAME':<20} {'ROUNDS':>6} {'PENDING':>7} {'QUARANT.':>8}  {'RUNNING':<28} FAILED"
    print(header)
    for s in statuses:
        running = (
            f"round {s.running['round']} on {s.running['worker']}"[:28]
            if s.running
            else ("-" if s.state == "collecting" else s.state.replace("_", " "))
        )
        failed = f"{s.failures_since_last_round}" + (f" ({s.last_failure})" if s.last_failure else "")
        print(
            f"{s.experiment_id:>5}  {s.name[:20]:<20} {s.rounds_completed:>6} {s.pending_updates:>7} "
            f"{s.quarantined_updates:>8}  {running:<28} {failed}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
