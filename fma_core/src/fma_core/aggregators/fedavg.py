"""FedAvg: the average of the clients' weights, weighted by their number of training examples.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017, arXiv:1602.05629.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fma_core.aggregators.base import AggregatorParams, LinearAggregator, UpdateInput
from fma_core.errors import ConfigurationError


@dataclass(frozen=True)
class FedAvgParams(AggregatorParams):
    """``weighted`` (default true): weigh each update by its ``num_examples``; false for uniform."""

    weighted: bool = True


class FedAvg(LinearAggregator):
    """Σ nᵢ·xᵢ / Σ nᵢ over the round's updates (or the plain mean with ``weighted=false``)."""

    name = "fedavg"
    Params = FedAvgParams

    def coefficients(self, updates: Sequence[UpdateInput]) -> np.ndarray:
        if not self.params.weighted:
            return np.full(len(updates), 1 / len(updates))
        counts = np.array([u.num_examples for u in updates], dtype=np.float64)
        if (counts < 0).any() or counts.sum() <= 0:
            raise ConfigurationError("weighted fedavg needs non-negative num_examples with a positive total")
        return counts / counts.sum()
