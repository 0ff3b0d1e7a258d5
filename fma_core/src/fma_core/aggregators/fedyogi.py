"""FedYogi: Yogi as the server's optimizer, the round's mean change as its gradient.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295, Algorithm 2
(``server_optimizer``): v ← v − (1 − β₂)·Δ²·sign(v − Δ²), x ← x + η·m / (√v + τ). v changes by at most
(1 − β₂)·Δ² a round, where Adam's moves by (1 − β₂)·(Δ² − v): after large changes, Yogi's v (and so
each coordinate's effective rate) recovers gradually instead of decaying geometrically (Zaheer et
al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018).

Defaults are Flower 1.42's ``FedYogi``: η = 0.01, β₁ = 0.9, β₂ = 0.99, τ = 1e-3. Flower computes the
same update as the paper, so the tests check this module against Flower's ``FedYogi`` round by round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fma_core.aggregators.server_optimizer import AdaptiveServerOptimizer, ServerOptimizerParams


@dataclass(frozen=True)
class FedYogiParams(ServerOptimizerParams):
    """η = ``server_learning_rate`` > 0; ``beta_1``, ``beta_2`` in [0, 1); ``tau`` > 0."""

    server_learning_rate: float = 0.01
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3


class FedYogi(AdaptiveServerOptimizer):
    name = "fedyogi"
    Params = FedYogiParams

    def second_moment(self, previous: np.ndarray, square: np.ndarray, out: np.ndarray) -> None:
        np.subtract(previous, square, out)  # v − (1 − β₂)·Δ²·sign(v − Δ²)
        np.sign(out, out)
        np.multiply(out, square, out)
        np.multiply(out, out.dtype.type(1 - self.params.beta_2), out)
        np.subtract(previous, out, out)
