"""Mean: the unweighted average of the updates, tensor by tensor.

Also registered under the original FMA's names, ``avg_values_if_data`` (``np.average`` of the
whole payload along the update axis) and ``average_layers`` (the same, layer by layer): on
tensors both are this mean. One difference is kept on purpose: results keep the model's dtype
instead of becoming float64 JSON numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fma_core.aggregators.base import LinearAggregator, UpdateInput


class Mean(LinearAggregator):
    """Σ xᵢ / N: every update counts the same, whatever its number of examples."""

    name = "mean"

    def coefficients(self, updates: Sequence[UpdateInput]) -> np.ndarray:
        return np.full(len(updates), 1 / len(updates))
