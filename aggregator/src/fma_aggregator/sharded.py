"""The distributed half of a sharded round, shared by the Celery tasks and the Lambda handler.

Each shard is one task (one invocation); the last shard to finish writes the aggregate and
commits, so no separate combine step waits for the others. Shards may run twice (a redelivered
task, a retried invocation, two shards finishing together): a shard rewrites the same object,
and one whose round has meanwhile been committed or taken over stops. A real failure gives the
round back with its reason.
"""

from __future__ import annotations

import logging
from typing import Any

from fma_core.errors import LeaseLost
from fma_core.rounds import RoundEngine, RoundOutcome
from fma_core.shards import RoundPlan

logger = logging.getLogger(__name__)


def finish_shard(engine: RoundEngine, plan: RoundPlan, index: int) -> dict[str, Any]:
    """Run shard ``index`` of the plan (and the commit, if it is the last one); the outcome as JSON."""
    try:
        record = engine.finish_shard(plan, index)
    except Exception as error:
        if superseded(engine, plan):
            logger.info("round %s of %s was finished elsewhere", plan.claim.round_number, plan.experiment_id)
            return summary(
                RoundOutcome("idle", plan.experiment_id, reason="the round was finished elsewhere")
            )
        engine.fail_round(plan, f"shard {index} failed: {type(error).__name__}: {error}")
        raise
    if record is None:
        return {"status": "shard_done", "experiment_id": plan.experiment_id, "shard": index}
    return summary(
        RoundOutcome("committed", plan.experiment_id, aggregate=record, quarantined=plan.quarantined)
    )


def superseded(engine: RoundEngine, plan: RoundPlan) -> bool:
    """True when the plan's claim is no longer current: committed, or taken over after its lease expired."""
    try:
        engine.metadata.renew_lease(plan.claim, lease_seconds=engine.lease_seconds)
    except LeaseLost:
        return True
    return False


def summary(outcome: RoundOutcome) -> dict[str, Any]:
    """An outcome as JSON, for task results, Lambda responses and the CLI."""
    aggregate = outcome.aggregate
    return {
        "status": outcome.status,
        "experiment_id": outcome.experiment_id,
        "aggregate_id": aggregate.aggregate_id if aggregate else None,
        "round": aggregate.round_number if aggregate else None,
        "updates": len(aggregate.draft.update_ids) if aggregate else 0,
        "quarantined": list(outcome.quarantined),
        "reason": outcome.reason,
        "wakeup_at": outcome.wakeup_at,
    }
