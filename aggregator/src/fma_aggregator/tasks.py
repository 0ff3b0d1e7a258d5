"""Celery tasks: a round, its shards (the last one to finish commits), an upload's check and the sweep.
Each task is safe to run twice."""

from __future__ import annotations

import logging
import time
from typing import Any

from fma_aggregator.celery import app, config
from fma_aggregator.checks import run_check, run_unmask
from fma_aggregator.engine import build_engine
from fma_core.dispatch import Dispatcher
from fma_core.shards import RoundPlan
from fma_django.housekeeping import housekeeping_sweep
from fma_django.store import DjangoMetadataStore

logger = logging.getLogger(__name__)


class CeleryDispatcher(Dispatcher):
    """A sharded round's shards as ``fma.compute_shard`` tasks, spread over the workers."""

    def send_shard(self, plan: RoundPlan, index: int) -> None:
        compute_shard.delay(plan.to_dict(), index)


@app.task(name="fma.run_round")
def run_round(experiment_id: str) -> dict[str, Any]:
    """Claim and run the experiment's round; a sharded one goes out as one task per shard."""
    return build_engine(config).run_round(experiment_id, CeleryDispatcher()).to_dict()


@app.task(name="fma.compute_shard")
def compute_shard(plan: dict[str, Any], index: int) -> dict[str, Any]:
    """One shard; the last one to finish writes the aggregate and commits the round."""
    return build_engine(config).run_shard(RoundPlan.from_dict(plan), index, CeleryDispatcher()).to_dict()


@app.task(name="fma.check_upload")
def check_upload(upload_id: str) -> dict[str, Any]:
    """Check an upload too large to check in its complete request: its update is accepted or refused."""
    return run_check(upload_id)


@app.task(name="fma.unmask_secure_round")
def unmask_secure_round(round_id: str) -> dict[str, Any]:
    """Sum a secure round whose shares are in: its aggregate is recorded (or the round fails)."""
    return run_unmask(round_id)


@app.task(name="fma.sweep")
def sweep() -> list[str]:
    """Queue a round for every experiment with pending updates and no live lease (deadlines, dead workers).

    Also expires stale upload sessions, queues the checks of uploads left ``checking``, prunes
    old update bytes and removes old bytes no record references (``housekeeping_sweep``).
    """
    housekeeping_sweep(lease_seconds=config.lease_seconds)
    due = DjangoMetadataStore().experiments_to_sweep(now=time.time())
    for experiment_id in due:
        run_round.delay(experiment_id)
    if due:
        logger.info("sweep queued rounds for experiments %s", ", ".join(due))
    return due
