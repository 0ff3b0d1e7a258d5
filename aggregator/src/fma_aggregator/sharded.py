"""The distributed half of a sharded round, shared by the Celery tasks and the Lambda handler.

Shards and the combine step may run twice (a redelivered task, a retried invocation, two shards
finishing together): shards rewrite the same object, and a second combine finds its claim
superseded and stops. A real failure gives the round back with its reason.
"""

from __future__ import annotations

import logging
from typing import Any

from fma_core.errors import LeaseLost
from fma_core.rounds import RoundEngine, RoundOutcome
from fma_core.shards import RoundPlan

logger = logging.getLogger(__name__)


def combine(engine: RoundEngine, plan: RoundPlan) -> RoundOutcome:
    """Combine the shards and commit; a duplicate combine of a finished round is a no-op."""
    try:
        record = engine.combine_and_commit(plan)
    except Exception as error:
        if superseded(engine, plan):
            logger.info(
                "round %s of %s was already finished elsewhere", plan.claim.round_number, plan.experiment_id
            )
            return RoundOutcome("idle", plan.experiment_id, reason="the round was finished by another worker")
        engine.fail_round(plan, f"combining shards failed: {type(error).__name__}: {error}")
        raise
    return RoundOutcome("committed", plan.experiment_id, aggregate=record, quarantined=plan.quarantined)


def fail(engine: RoundEngine, plan: RoundPlan, reason: str) -> None:
    """A shard failed: give the round back (unless it already moved on) so its updates stay pending."""
    if not superseded(engine, plan):
        engine.fail_round(plan, reason)


def superseded(engine: RoundEngine, plan: RoundPlan) -> bool:
    """True when the plan's claim is no longer current: committed, or taken over after its lease expired."""
    try:
        engine.metadata.renew_lease(plan.claim, lease_seconds=engine.lease_seconds)
    except LeaseLost:
        return True
    return False


def partials_complete(engine: RoundEngine, plan: RoundPlan) -> bool:
    return all(engine.weights.exists(plan.partial_key(i)) for i in range(len(plan.shards)))


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
