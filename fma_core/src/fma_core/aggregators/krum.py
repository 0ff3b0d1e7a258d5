"""Krum and Multi-Krum: keep the m updates closest to their neighbours, average them.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS
2017. Each update's score is the sum of its squared distances to its N − f − 2 nearest others; Krum
(m = 1) returns the update of lowest score, Multi-Krum the mean of the m lowest. Tolerates f
Byzantine updates among N ≥ 2f + 3.

The distances are found by the round's prepare pass (``fma_core.aggregators.distances``: one
streamed read of every update, N² scalars); the aggregation is then linear, coefficient 1/m for the
selected and 0 for the rest (whose updates are not read again), so the lineage shows each update's
share, and the report its score and the selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fma_core.aggregators.base import (
    Aggregator,
    AggregatorParams,
    LinearAggregator,
    RoundContext,
    UpdateInput,
    canonical_order,
)
from fma_core.aggregators.distances import best, krum_scores, squared_distances
from fma_core.errors import ConfigurationError, TooFewUpdates
from fma_core.weights import TensorSpec


@dataclass(frozen=True)
class KrumParams(AggregatorParams):
    """``f`` (required): how many Byzantine updates to tolerate; a round needs N ≥ 2f + 3 (and ≥ m).
    ``m`` (default 1, Krum): how many of the best-scored updates to average (Multi-Krum).
    ``weighted`` (default false, as in the paper): weigh the m selected by ``num_examples``, as Flower
    does; a client may claim any number of examples, so this lets one selected update dominate."""

    f: int
    m: int = 1
    weighted: bool = False

    def __post_init__(self) -> None:
        if self.f < 0:
            raise ConfigurationError(f"f must be at least 0, not {self.f}")
        if self.m < 1:
            raise ConfigurationError(f"m must be at least 1, not {self.m}")


class Krum(LinearAggregator):
    """The mean (or example-weighted mean) of the m updates of lowest Krum score; m = 1 is Krum."""

    name = "krum"
    Params = KrumParams
    supports_privacy = False  # its selection reads every update: one client changes who counts

    def min_updates(self) -> int:
        return max(2 * self.params.f + 3, self.params.m)

    def prepare(self, updates: Sequence[UpdateInput], spec: TensorSpec, context: RoundContext) -> Any:
        check_count(self, len(updates), f"2f + 3 = {2 * self.params.f + 3}, and m = {self.params.m}")
        scores = krum_scores(squared_distances(updates, spec), self.params.f)
        return {
            "selected": [updates[i].update_id for i in best(scores, self.params.m)],
            "scores": {u.update_id: float(s) for u, s in zip(updates, scores, strict=True)},
        }

    def input_weights(self, updates: Sequence[UpdateInput]) -> None:
        return None  # the shares are the round's selection: ``round_shares``

    def round_shares(self, updates: Sequence[UpdateInput], context: RoundContext) -> list[float]:
        return self.round_coefficients(canonical_order(updates), context).tolist()

    def round_coefficients(self, updates: Sequence[UpdateInput], context: RoundContext) -> np.ndarray:
        selected = set(context.prepared["selected"])
        chosen = np.array([u.update_id in selected for u in updates])
        counts = np.array([u.num_examples for u in updates], dtype=np.float64)
        weights = np.where(chosen, counts if self.params.weighted else 1.0, 0.0)
        if weights.sum() <= 0:
            raise ConfigurationError(
                "weighted krum needs selected updates with a positive num_examples total"
            )
        return weights / weights.sum()

    def report(self, updates: Sequence[UpdateInput], context: RoundContext) -> dict[str, Any]:
        return dict(context.prepared)


def check_count(aggregator: Aggregator, count: int, why: str) -> None:
    """TooFewUpdates unless a round of ``count`` updates meets the algorithm's minimum."""
    needed = aggregator.min_updates()
    if count < needed:
        raise TooFewUpdates(
            f"aggregator {aggregator.name!r} with f = {aggregator.params.f} needs at least {needed} updates "
            f"a round ({why}); this round has {count}",
            needed=needed,
            available=count,
        )
