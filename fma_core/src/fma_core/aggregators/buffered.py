"""The buffered step of asynchronous rounds: x ← x + η·Δ, with Δ the discounted mean change.

What an asynchronous experiment with aggregator ``fedavg`` or ``mean`` runs (``fma_core.asynchronous``):
FedBuff's server update (Nguyen et al., AISTATS 2022, Algorithm 1) with examples weights. Δ is the
server optimizers' pseudo-gradient (``server_optimizer.examples_shares``), so each update's change is
read from its own base and discounted by its ``UpdateInput.discount``. No server state. Not
registered by name: the round engine builds it for an asynchronous experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fma_core.aggregators.base import Block, RoundContext, UpdateInput
from fma_core.aggregators.server_optimizer import ServerOptimizer, ServerOptimizerParams, examples_shares


@dataclass(frozen=True)
class BufferedStepParams(ServerOptimizerParams):
    """``server_learning_rate`` η > 0 (default 1.0); ``weighted`` (default true): weigh each update by its
    examples, false for equal shares (aggregator ``mean``)."""

    server_learning_rate: float = 1.0
    weighted: bool = True


class BufferedStep(ServerOptimizer):
    """x ← x + η·Σ nᵢ·sᵢ·Δᵢ / Σ nᵢ (nᵢ = 1 for every update when not ``weighted``)."""

    name = "buffered_step"
    Params = BufferedStepParams

    @classmethod
    def keeps_state(cls) -> bool:
        return False

    def state_scalars(self, context: RoundContext) -> Mapping[str, float] | None:
        return None

    def shares(self, updates: Sequence[UpdateInput]) -> np.ndarray:
        return examples_shares(updates, weighted=self.params.weighted)

    def step(self, block: Block, delta: np.ndarray, work: np.ndarray, result: np.ndarray) -> None:
        np.multiply(delta, block.accumulator.type(self.params.server_learning_rate), result)
        np.add(result, block.parent(), result, casting="unsafe")
