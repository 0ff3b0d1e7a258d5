"""Where a round the API says may be ready, or an upload it wants checked, goes: the one place that
reads ``FMA_AGGREGATOR_RUNNER``.

``notify(experiment_id)`` is connected to fma-django's ``round_may_be_ready`` signal (see
``apps.py``), which the API sends after an accepted update commits. Every runner only *tells*
something to try the round; the round engine's claim decides, so a lost or repeated notification
is harmless (the sweep catches up on lost ones). ``request_check(upload_id)`` is connected to
``upload_check_requested`` the same way: the check locks its upload session, so a repeated
request is harmless too, and the sweep requests again every check still waiting.
``request_unmask(round_id)`` is connected to ``secure_round_unmask_requested`` alike: the sum
locks its secure round, and the sweep requests again every round still ``summing``.

Neither waits on a broker: the in-process runner queues in memory, Celery messages go through this
process's ``Announcer`` thread, and a Lambda invocation has short timeouts and no retry.
"""

from __future__ import annotations

import threading
import time

from fma_aggregator.announcer import Announcer
from fma_aggregator.checks import run_check, run_unmask
from fma_aggregator.config import AggregatorConfig, runner_name
from fma_aggregator.engine import build_engine, fresh_connection
from fma_aggregator.inprocess import InProcessRunner
from fma_core.rounds import RoundOutcome
from fma_django.housekeeping import housekeeping_sweep, uploads_checking
from fma_django.secure_rounds import secure_rounds_summing
from fma_django.store import DjangoMetadataStore

_lock = threading.Lock()
_inprocess: InProcessRunner | None = None
_announcer: Announcer | None = None


def notify(experiment_id: str | int) -> None:
    """Hand the experiment to the configured runner; returns at once."""
    name = runner_name()
    if name == "inprocess":
        inprocess_runner().notify(experiment_id)
    elif name == "celery":
        celery_announcer().announce("fma.run_round", str(experiment_id))
    elif name == "lambda":
        from fma_aggregator.lambda_invoke import LambdaInvoker

        LambdaInvoker.announcing(AggregatorConfig.from_env()).round_ready(str(experiment_id))


def request_check(upload_id: str) -> None:
    """Hand an upload's check to the configured runner; returns at once. With ``none`` nothing is
    sent: ``fma-aggregator run-once`` checks every upload left waiting."""
    name = runner_name()
    if name == "inprocess":
        inprocess_runner().check_upload(upload_id)
    elif name == "celery":
        celery_announcer().announce("fma.check_upload", upload_id)
    elif name == "lambda":
        from fma_aggregator.lambda_invoke import LambdaInvoker

        LambdaInvoker.announcing(AggregatorConfig.from_env()).check_upload(upload_id)


def request_unmask(round_id: int | str) -> None:
    """Hand a secure round's sum to the configured runner; returns at once. With ``none`` nothing is
    sent: ``fma-aggregator run-once`` sums every round left waiting."""
    name = runner_name()
    if name == "inprocess":
        inprocess_runner().unmask(str(round_id))
    elif name == "celery":
        celery_announcer().announce("fma.unmask_secure_round", str(round_id))
    elif name == "lambda":
        from fma_aggregator.lambda_invoke import LambdaInvoker

        LambdaInvoker.announcing(AggregatorConfig.from_env()).unmask_secure_round(str(round_id))


def celery_announcer() -> Announcer:
    """This process's sender of Celery messages, created on first use."""
    global _announcer
    with _lock:
        if _announcer is None:
            from fma_aggregator.celery import publish

            _announcer = Announcer(publish)
        return _announcer


def inprocess_runner(config: AggregatorConfig | None = None) -> InProcessRunner:
    """This process's in-process runner, created on first use."""
    global _inprocess
    with _lock:
        if _inprocess is None:
            _inprocess = django_inprocess_runner(config or AggregatorConfig.from_env())
        return _inprocess


def django_inprocess_runner(config: AggregatorConfig) -> InProcessRunner:
    """An in-process runner over the service's database and weight store.

    Its sweep queues the check of every upload (and the sum of every secure round) left waiting
    itself: a standalone worker beside an
    API whose runner is ``none`` (the same environment) is notified of nothing.
    """

    def run(experiment_id: str) -> RoundOutcome:
        with fresh_connection():
            return build_engine(config).run_round(experiment_id)

    def check(upload_id: str) -> None:
        with fresh_connection():
            run_check(upload_id)

    def unmask(round_id: str) -> None:
        with fresh_connection():
            run_unmask(round_id)

    def sweep() -> list[str]:
        with fresh_connection():
            housekeeping_sweep(lease_seconds=config.lease_seconds)
            for upload_id in uploads_checking():
                runner.check_upload(upload_id)
            for round_id in secure_rounds_summing():
                runner.unmask(str(round_id))
            return DjangoMetadataStore().experiments_to_sweep(now=time.time())

    runner = InProcessRunner(
        run=run, check=check, unmask=unmask, sweep=sweep, sweep_seconds=config.sweep_seconds
    )
    return runner
