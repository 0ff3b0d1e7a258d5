"""What the server optimizers share: FedAvgM, FedAdam, FedYogi and FedAdagrad treat the round's mean
change as a pseudo-gradient and take one optimizer step from the current global model.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295, Algorithm 2. Each
round, with x the current global model and Δ the examples-weighted mean of the updates' changes,
each from the model it was trained from (so a stale update counts as the step it took, and a delta
as sent)::

    Δ = Σ nᵢ·changeᵢ / Σ nᵢ
    m ← β₁·m + (1 − β₁)·Δ
    v ← Adagrad: v + Δ²;  Adam: β₂·v + (1 − β₂)·Δ²;  Yogi: v − (1 − β₂)·Δ²·sign(v − Δ²)
    x ← x + η·m / (√v + τ)

m and v start at zero, as in Flower (Algorithm 2 takes any v₋₁ ≥ τ², a bound its analysis uses;
from zero, √v + τ is still at least τ). They are kept per coordinate as server state,
in the tensor's accumulator dtype, beside each aggregate; the state's scalar ``rounds`` counts the
steps taken. Every block is computed from the updates streamed one at a time: the extra memory is
the result and the state plus a few blocks per thread, whatever the number of updates.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from fma_core.aggregators.base import (
    Aggregator,
    AggregatorParams,
    Block,
    RoundContext,
    UpdateInput,
    share_plan,
    store,
    weighted_sum,
)
from fma_core.errors import ConfigurationError


def examples_shares(updates: Sequence[UpdateInput], *, weighted: bool = True) -> np.ndarray:
    """Each update's share of the pseudo-gradient: nᵢ·sᵢ / Σ nᵢ (float64, in the given order), sᵢ its
    staleness discount (1 in a synchronous round), nᵢ = 1 for all when not ``weighted``. Dividing by Σ nᵢ,
    not Σ nᵢ·sᵢ, is FedBuff's: a stale update shrinks the step rather than take a fresh one's share."""
    if weighted:
        counts = np.array([u.num_examples for u in updates], dtype=np.float64)
    else:
        counts = np.ones(len(updates), dtype=np.float64)
    if (counts < 0).any() or counts.sum() <= 0:
        raise ConfigurationError("a server optimizer needs non-negative num_examples with a positive total")
    discounts = np.array([u.discount for u in updates], dtype=np.float64)
    return counts * discounts / counts.sum()


def check_range(
    params: AggregatorParams, name: str, *, low: float, high: float, low_open: bool, high_open: bool
) -> None:
    """Refuse a parameter outside its range, naming it and the range, as a ConfigurationError."""
    value = getattr(params, name)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {'∞' if math.isinf(high) else f'{high:g}'}"
        interval += ")" if high_open else "]"
        raise ConfigurationError(f"parameter {name!r} must be in {interval}, not {value!r}")


@dataclass(frozen=True)
class ServerOptimizerParams(AggregatorParams):
    """Checks every field it knows by name: ``server_learning_rate`` and ``tau`` > 0, the decay rates
    (``momentum``, ``beta_1``, ``beta_2``) in [0, 1)."""

    def __post_init__(self) -> None:
        for field in fields(self):
            if field.name in ("server_learning_rate", "tau"):
                check_range(self, field.name, low=0, high=math.inf, low_open=True, high_open=True)
            elif field.name in ("momentum", "beta_1", "beta_2"):
                check_range(self, field.name, low=0, high=1, low_open=False, high_open=True)


class ServerOptimizer(Aggregator):
    """A server optimizer: reads the current model and each update's change, keeps state per coordinate.

    A subclass writes ``step``: given Δ for one block, write the new state into ``block.state_out``
    and the new model's values (parent + step) into ``result``.
    """

    needs_parent = True
    reads_changes = True
    supports_privacy = True
    state_tensors: ClassVar[tuple[str, ...]] = ()

    def shares(self, updates: Sequence[UpdateInput]) -> np.ndarray:
        """Each update's share of Δ, in the given order."""
        return examples_shares(updates)

    def input_weights(self, updates: Sequence[UpdateInput]) -> list[float]:
        return self.shares(updates).tolist()

    def state_scalars(self, context: RoundContext) -> Mapping[str, float]:
        previous = context.state.scalars.get("rounds", 0) if context.state else 0
        return {"rounds": previous + 1}

    def _plan(self, updates: Sequence[UpdateInput], context: RoundContext) -> np.ndarray | float:
        return share_plan(self.shares(updates))

    def _combine(self, block: Block) -> None:
        acc = block.accumulator
        delta = block.scratch.get("delta", block.count, acc)
        work = block.scratch.get("work", block.count, acc)
        weighted_sum(block, block.plan, delta)
        block.add_noise(delta)
        result = block.out if block.out.dtype == acc else block.scratch.get("result", block.count, acc)
        self.step(block, delta, work, result)
        store(result, block.out)

    @abstractmethod
    def step(self, block: Block, delta: np.ndarray, work: np.ndarray, result: np.ndarray) -> None:
        """From Δ, write the block's new state and ``result`` = the new model; ``delta`` and ``work`` (a
        block of scratch) may be overwritten. Few passes over the block: each costs as much as two
        more updates would."""


class AdaptiveServerOptimizer(ServerOptimizer):
    """Reddi et al.'s Algorithm 2: FedAdagrad, FedAdam and FedYogi differ only in how v is updated."""

    state_tensors = ("m", "v")

    @abstractmethod
    def second_moment(self, previous: np.ndarray, square: np.ndarray, out: np.ndarray) -> None:
        """Write the new v into ``out`` from the previous v and Δ² (``square``, which may be overwritten)."""

    def step(self, block: Block, delta: np.ndarray, work: np.ndarray, result: np.ndarray) -> None:
        acc = block.accumulator
        beta_1 = self.params.beta_1
        m, v = block.state_out["m"], block.state_out["v"]
        np.multiply(delta, delta, work)
        self.second_moment(block.state("v"), work, v)
        np.multiply(block.state("m"), acc.type(beta_1), m)  # m ← β₁·m + (1 − β₁)·Δ
        np.multiply(delta, acc.type(1 - beta_1), delta)
        np.add(m, delta, m)
        np.sqrt(v, work)  # x ← x + η·m / (√v + τ)
        np.add(work, acc.type(self.params.tau), work)
        np.divide(m, work, result)
        np.multiply(result, acc.type(self.params.server_learning_rate), result)
        np.add(result, block.parent(), result, casting="unsafe")
