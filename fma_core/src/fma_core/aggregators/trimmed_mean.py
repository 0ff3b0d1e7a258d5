"""Coordinate-wise trimmed mean: per parameter, drop the largest and smallest values, average the rest.

Robust to up to ``trim_fraction`` of arbitrary updates on each side. Yin et al., "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018, arXiv:1803.01498.
Memory: N × block elements per thread (see CoordinateWiseAggregator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fma_core.aggregators.base import AggregatorParams, CoordinateWiseAggregator
from fma_core.errors import ConfigurationError


@dataclass(frozen=True)
class TrimmedMeanParams(AggregatorParams):
    """``trim_fraction`` (default 0.1): share of updates dropped at each end, in [0, 0.5)."""

    trim_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigurationError(f"trim_fraction must be in [0, 0.5), not {self.trim_fraction}")


class TrimmedMean(CoordinateWiseAggregator):
    """Mean of the values left after dropping ⌊trim_fraction·N⌋ from each end, per coordinate."""

    name = "trimmed_mean"
    Params = TrimmedMeanParams

    def reduce(self, stack: np.ndarray, out: np.ndarray) -> None:
        trimmed = int(self.params.trim_fraction * len(stack))
        stack.sort(axis=0)
        np.mean(stack[trimmed : len(stack) - trimmed], axis=0, out=out)
