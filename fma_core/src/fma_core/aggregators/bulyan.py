"""Bulyan: select by iterated Krum, then per coordinate average the values closest to the median.

El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium", ICML 2018.
θ = N − 2f updates are chosen one at a time, each the Krum choice among those not chosen yet (its
score over them alone, with at least one neighbour, as Flower does when fewer than f + 3 are left);
then, per coordinate, the result is the mean of the β = θ − 2f selected values closest to their
median. Tolerates f Byzantine updates among N ≥ 4f + 3.

The prepare pass finds the distances and the selection (``fma_core.aggregators.distances``); the
blocks then read only the θ selected updates: θ × block values per thread, as the median's N × block.
A tie in distance to the median goes to the lower value (a tie in Krum score, to the update first in
canonical order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fma_core.aggregators.base import (
    AggregatorParams,
    Block,
    CoordinateWiseAggregator,
    RoundContext,
    UpdateInput,
    store,
)
from fma_core.aggregators.distances import iterated_krum, krum_scores, squared_distances
from fma_core.aggregators.krum import check_count
from fma_core.errors import ConfigurationError
from fma_core.weights import TensorSpec


@dataclass(frozen=True)
class BulyanParams(AggregatorParams):
    """``f`` (required): how many Byzantine updates to tolerate; a round needs N ≥ 4f + 3."""

    f: int

    def __post_init__(self) -> None:
        if self.f < 0:
            raise ConfigurationError(f"f must be at least 0, not {self.f}")


class Bulyan(CoordinateWiseAggregator):
    """Per coordinate, the mean of the β selected values nearest the selected values' median."""

    name = "bulyan"
    Params = BulyanParams

    def min_updates(self) -> int:
        return 4 * self.params.f + 3

    def prepare(self, updates: Sequence[UpdateInput], spec: TensorSpec, context: RoundContext) -> Any:
        check_count(self, len(updates), "4f + 3")
        f = self.params.f
        distances = squared_distances(updates, spec)
        theta = len(updates) - 2 * f
        return {
            "selected": [updates[i].update_id for i in iterated_krum(distances, f, theta)],
            "scores": {
                u.update_id: float(s) for u, s in zip(updates, krum_scores(distances, f), strict=True)
            },
            "theta": theta,
            "beta": theta - 2 * f,
        }

    def report(self, updates: Sequence[UpdateInput], context: RoundContext) -> dict[str, Any]:
        return dict(context.prepared)

    def _plan(self, updates: Sequence[UpdateInput], context: RoundContext) -> list[int]:
        """The positions (canonical order) of the selected updates: the only ones the blocks read."""
        selected = set(context.prepared["selected"])
        return [i for i, u in enumerate(updates) if u.update_id in selected]

    def _combine(self, block: Block) -> None:
        rows = block.plan
        acc_dtype = block.accumulator
        stack = block.scratch.get("stack", len(rows) * block.count, acc_dtype).reshape(len(rows), block.count)
        for row, values in zip(stack, block.inputs(rows), strict=True):
            row[...] = values
        result = (
            block.out if block.out.dtype == acc_dtype else block.scratch.get("acc", block.count, acc_dtype)
        )
        self.reduce(stack, result)
        store(result, block.out)

    def reduce(self, stack: np.ndarray, out: np.ndarray) -> None:
        """Per column of the θ selected values, the mean of the β = θ − 2f nearest the column's median.
        Sorted, those form a window: the one whose farther end is nearest the median. A tie between two
        windows goes to the lower values, so the result depends on the values alone, not on their order."""
        theta = len(stack)
        beta = theta - 2 * self.params.f
        stack.sort(axis=0)
        middle = theta // 2
        median = stack[middle] if theta % 2 else (stack[middle - 1] + stack[middle]) / 2
        reach = np.maximum(median - stack[: theta - beta + 1], stack[beta - 1 :] - median)
        width = stack.shape[1]
        at = np.argmin(reach, axis=0) * width + np.arange(width)  # each column's window starts there
        values = stack.reshape(-1)
        np.take(values, at, out=out)
        for _ in range(beta - 1):  # a row of the windows at a time: no β × block temporaries
            at += width
            out += values[at]
        out /= beta
