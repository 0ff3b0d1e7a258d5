"""``Dispatcher``: where a round's shards go when they are not computed in the process that started it.

``RoundEngine.run_round(experiment_id, dispatcher)`` claims and plans the round, then sends one
shard per ``send_shard`` call; whoever receives it runs ``RoundEngine.run_shard(plan, index,
dispatcher)``, and the shard that finds every other one stored commits. Without a dispatcher (the
in-process runner, the CLI) every shard is computed in the calling process. fma-aggregator has the
Celery (one task per shard) and Lambda (one asynchronous invocation per shard) implementations;
nothing else about a round differs between runners.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from fma_core.shards import RoundPlan


class Dispatcher(ABC):
    """Sends one shard of a planned round to be computed elsewhere; must not wait for it."""

    @abstractmethod
    def send_shard(self, plan: RoundPlan, index: int) -> None:
        """Have ``RoundEngine.run_shard(plan, index, ...)`` run somewhere, at least once."""
