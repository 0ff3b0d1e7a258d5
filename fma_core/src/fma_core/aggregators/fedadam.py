"""FedAdam: Adam as the server's optimizer, the round's mean change as its gradient.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295, Algorithm 2
(``server_optimizer``): v ← β₂·v + (1 − β₂)·Δ², x ← x + η·m / (√v + τ).

Defaults are Flower 1.42's ``FedAdam``: η = 0.1, β₁ = 0.9, β₂ = 0.99, τ = 1e-9 (Reddi et al. tune η
and τ per task).

Flower's ``FedAdam`` differs from the paper: it also multiplies η by Adam's bias correction
√(1 − β₂ᵗ⁺¹) / (1 − β₁ᵗ⁺¹) in round t (Kingma and Ba's αₜ, with an exponent one higher than the
step count), so with the default β's its steps are smaller (×0.74 in round 1, ×0.47 at the lowest,
round 12, ×0.80 in round 100) and reach the paper's only after some hundreds of rounds. This module computes the paper's; the tests check that with η multiplied by
the inverse of that factor, Flower's rounds are this module's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fma_core.aggregators.server_optimizer import AdaptiveServerOptimizer, ServerOptimizerParams


@dataclass(frozen=True)
class FedAdamParams(ServerOptimizerParams):
    """η = ``server_learning_rate`` > 0; ``beta_1``, ``beta_2`` in [0, 1); ``tau`` > 0."""

    server_learning_rate: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-9


class FedAdam(AdaptiveServerOptimizer):
    name = "fedadam"
    Params = FedAdamParams

    def second_moment(self, previous: np.ndarray, square: np.ndarray, out: np.ndarray) -> None:
        beta_2 = self.params.beta_2
        np.multiply(previous, out.dtype.type(beta_2), out)
        np.multiply(square, out.dtype.type(1 - beta_2), square)
        np.add(out, square, out)
