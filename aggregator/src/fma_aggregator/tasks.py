"""Celery tasks: a round, its shards (a chord) and the sweep. Each task is safe to run twice."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import chord

from fma_aggregator import sharded
from fma_aggregator.celery import app, config
from fma_aggregator.engine import build_engine
from fma_core.rounds import RoundOutcome
from fma_core.shards import RoundPlan
from fma_django.housekeeping import housekeeping_sweep
from fma_django.store import DjangoMetadataStore

logger = logging.getLogger(__name__)


@app.task(name="fma.run_round")
def run_round(experiment_id: str) -> dict[str, Any]:
    """Claim and run the experiment's round; a sharded one goes out as a chord of shard tasks."""
    engine = build_engine(config)
    started = engine.start_round(experiment_id)
    if isinstance(started, RoundOutcome):
        return sharded.summary(started)
    if len(started.shards) == 1 or not app.conf.result_backend:
        return sharded.summary(engine.finish_round(started))
    plan = started.to_dict()
    chord(compute_shard.s(plan, index) for index in range(len(started.shards)))(combine_shards.s(plan))
    return {"status": "sharded", "experiment_id": experiment_id, "shards": len(started.shards)}


@app.task(name="fma.compute_shard")
def compute_shard(plan: dict[str, Any], index: int) -> str:
    engine = build_engine(config)
    round_plan = RoundPlan.from_dict(plan)
    try:
        return engine.compute_shard(round_plan, index)
    except Exception as error:
        sharded.fail(engine, round_plan, f"shard {index} failed: {type(error).__name__}: {error}")
        raise


@app.task(name="fma.combine_shards")
def combine_shards(partial_keys: list[str], plan: dict[str, Any]) -> dict[str, Any]:
    """The chord's body: Celery passes the shards' keys first; the plan names the same objects."""
    return sharded.summary(sharded.combine(build_engine(config), RoundPlan.from_dict(plan)))


@app.task(name="fma.sweep")
def sweep() -> list[str]:
    """Queue a round for every experiment with pending updates and no live lease (deadlines, dead workers).

    Also expires stale upload sessions and prunes old update bytes (``housekeeping_sweep``).
    """
    housekeeping_sweep()
    due = DjangoMetadataStore().experiments_to_sweep(now=time.time())
    for experiment_id in due:
        run_round.delay(experiment_id)
    if due:
        logger.info("sweep queued rounds for experiments %s", ", ".join(due))
    return due
