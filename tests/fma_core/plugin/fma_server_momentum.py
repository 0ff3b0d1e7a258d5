"""A third party's stateful strategy, in one file: server momentum (FedAvgM).

Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", 2019, arXiv:1909.06335. Each round, with Δ the examples-weighted mean of the
updates' changes from the models they were trained from::

    m ← β·m + Δ          (m: the server's momentum, kept from round to round)
    x ← x_parent + η·m

This is how a package adds one: subclass ``Aggregator``, declare what the round must give it
(``needs_parent``, ``reads_changes``, ``state_tensors``), write ``_combine`` for one block, and
register the class under ``[project.entry-points."fma_core.aggregators"]``. The round engine
stores the momentum beside each aggregate and hands it to the next round, whichever worker runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fma_core.aggregators import Aggregator, AggregatorParams, UpdateInput
from fma_core.aggregators.base import Block, RoundContext, store


@dataclass(frozen=True)
class ServerMomentumParams(AggregatorParams):
    server_learning_rate: float = 1.0
    momentum: float = 0.9


class ServerMomentum(Aggregator):
    name = "server_momentum"
    Params = ServerMomentumParams
    needs_parent = True
    reads_changes = True
    state_tensors = ("momentum",)

    def state_scalars(self, context: RoundContext) -> Mapping[str, float]:
        previous = context.state.scalars.get("rounds", 0) if context.state else 0
        return {"rounds": previous + 1}

    def input_weights(self, updates: Sequence[UpdateInput]) -> list[float]:
        counts = np.array([u.num_examples for u in updates], dtype=np.float64)
        return (counts / counts.sum()).tolist()

    def _plan(self, updates: Sequence[UpdateInput], context: RoundContext) -> np.ndarray:
        return np.asarray(self.input_weights(updates))

    def _combine(self, block: Block) -> None:
        acc = block.accumulator
        change = block.scratch.get("change", block.count, acc)
        term = block.scratch.get("term", block.count, acc)
        coefficients = block.plan.astype(acc)
        change.fill(0)
        for value, coefficient in zip(block.inputs(), coefficients, strict=True):
            np.multiply(value, coefficient, term)
            np.add(change, term, change)
        momentum = block.state_out["momentum"]
        np.multiply(block.state("momentum"), acc.type(self.params.momentum), momentum)
        np.add(momentum, change, momentum)
        result = block.scratch.get("result", block.count, acc)
        np.multiply(momentum, acc.type(self.params.server_learning_rate), result)
        np.add(result, block.parent(), result, casting="unsafe")
        store(result, block.out)
