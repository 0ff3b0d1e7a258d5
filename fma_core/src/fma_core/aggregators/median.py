"""Coordinate-wise median: each parameter is the median of the updates' values.

Robust to a minority of arbitrary (Byzantine) updates. Yin et al., "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018, arXiv:1803.01498.
Memory: N × block elements per thread (see CoordinateWiseAggregator).
"""

from __future__ import annotations

import numpy as np

from fma_core.aggregators.base import CoordinateWiseAggregator


class Median(CoordinateWiseAggregator):
    """The per-coordinate median; with an even count, the mean of the two middle values."""

    name = "median"

    def reduce(self, stack: np.ndarray, out: np.ndarray) -> None:
        np.median(stack, axis=0, overwrite_input=True, out=out)
