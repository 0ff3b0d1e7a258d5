"""FedAdagrad: Adagrad as the server's optimizer, the round's mean change as its gradient.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295, Algorithm 2
(``server_optimizer``): v ← v + Δ², x ← x + η·m / (√v + τ), with m ← β₁·m + (1 − β₁)·Δ as for
FedAdam and FedYogi: Algorithm 2 applies the momentum β₁ to all three.

``beta_1`` defaults to 0 (m = Δ: Duchi et al.'s Adagrad, without momentum), which is what Flower
1.42's ``FedAdagrad`` always computes (it passes β₁ = 0 to ``FedOpt`` and takes no ``beta_1``); set
it to use Algorithm 2's momentum. η = 0.1 and τ = 1e-9 are Flower's defaults too. With β₁ = 0 this
module computes what Flower's does, and the tests check the two round by round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fma_core.aggregators.server_optimizer import AdaptiveServerOptimizer, ServerOptimizerParams


@dataclass(frozen=True)
class FedAdagradParams(ServerOptimizerParams):
    """η = ``server_learning_rate`` > 0; ``beta_1`` in [0, 1) (default 0: no momentum); ``tau`` > 0."""

    server_learning_rate: float = 0.1
    beta_1: float = 0.0
    tau: float = 1e-9


class FedAdagrad(AdaptiveServerOptimizer):
    name = "fedadagrad"
    Params = FedAdagradParams

    def second_moment(self, previous: np.ndarray, square: np.ndarray, out: np.ndarray) -> None:
        np.add(previous, square, out)
