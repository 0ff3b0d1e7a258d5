"""FedAvgM: FedAvg with server momentum.

Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", 2019, arXiv:1909.06335. Each round, with Δ the examples-weighted mean of the
updates' changes, each from the model it was trained from (``server_optimizer``)::

    m ← β·m + Δ          (m: the server's momentum, zero before the first round)
    x ← x + η·m

Defaults: ``server_learning_rate`` η = 1.0 (Hsu et al.'s effective learning rate is η/(1 − β); η = 1
with β = 0 is plain FedAvg, and is Flower's default); ``momentum`` β = 0.9, one of the server momenta Hsu et al.
sweep (Flower's default is 0, i.e. FedAvg). This is what Flower 1.42's
``FedAvgM`` computes (its pseudo-gradient is −Δ, its round 1 momentum Δ itself, the same as β·0 + Δ),
for updates all trained from the current model: Flower has no stale updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fma_core.aggregators.base import Block
from fma_core.aggregators.server_optimizer import ServerOptimizer, ServerOptimizerParams


@dataclass(frozen=True)
class FedAvgMParams(ServerOptimizerParams):
    """``server_learning_rate`` η > 0 (default 1.0); ``momentum`` β in [0, 1) (default 0.9)."""

    server_learning_rate: float = 1.0
    momentum: float = 0.9


class FedAvgM(ServerOptimizer):
    """x ← x + η·m with m ← β·m + Δ, the momentum kept as server state."""

    name = "fedavgm"
    Params = FedAvgMParams
    state_tensors = ("momentum",)

    def step(self, block: Block, delta: np.ndarray, work: np.ndarray, result: np.ndarray) -> None:
        acc = block.accumulator
        momentum = block.state_out["momentum"]
        np.multiply(block.state("momentum"), acc.type(self.params.momentum), momentum)
        np.add(momentum, delta, momentum)
        np.multiply(momentum, acc.type(self.params.server_learning_rate), result)
        np.add(result, block.parent(), result, casting="unsafe")
