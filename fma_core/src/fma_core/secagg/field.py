"""Fixed-point encoding of a weighted update in the integers modulo 2^64, and back.

Masks must be uniform over a finite group for the masked input to hide the update, so updates are
quantized: each value, clipped to ``[-clip, clip]``, becomes an integer in ``[0, 2^bits − 1]``
(stochastic rounding by default: unbiased, so the quantization error of a sum averages out), which
is then multiplied by the client's weight (its number of examples, at most ``max_weight``). The
weight itself travels as one more element, so the sum carries Σ wᵢ and the server computes the
weighted mean Σ wᵢ xᵢ / Σ wᵢ without learning any wᵢ.

Arithmetic is numpy's ``uint64``, which wraps modulo 2^64: masks and sums cost one machine add per
value. The sum of n clients cannot wrap as long as ``n · max_weight · (2^bits − 1) < 2^64``
(:meth:`FieldParams.capacity`); a round with more participants is refused before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODULUS_BITS = 64


@dataclass(frozen=True)
class FieldParams:
    """How values become field elements: the clipping range, the bits per value, the largest weight."""

    clip: float = 8.0
    bits: int = 24
    max_weight: int = 2**20
    stochastic: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 52:
            raise ValueError("bits must be between 1 and 52 (a float64 holds them exactly)")
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError("clip must be a positive number")
        # the range 2·clip, and the scale times the largest sum (the mean divides by it), stay floats
        if not (np.isfinite(2.0 * self.clip) and np.isfinite(self.scale * 2.0**MODULUS_BITS)):
            raise ValueError(f"clip {self.clip:g} is too {'large' if self.clip > 1 else 'small'} to encode")
        if self.max_weight < 1:
            raise ValueError("max_weight must be at least 1")
        if self.capacity() < 1:
            raise ValueError("bits and max_weight leave no room for even one client in 2^64")

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    @property
    def scale(self) -> float:
        """Field units per unit of value: ``2 · clip`` spans every level."""
        return self.levels / (2.0 * self.clip)

    def capacity(self) -> int:
        """The most clients whose weighted values can be summed without wrapping modulo 2^64."""
        return (2**MODULUS_BITS - 1) // (self.max_weight * self.levels)

    def as_json(self) -> dict:
        return {
            "clip": self.clip,
            "bits": self.bits,
            "max_weight": self.max_weight,
            "stochastic": self.stochastic,
        }

    @classmethod
    def from_json(cls, data: dict) -> FieldParams:
        return cls(
            clip=float(data["clip"]),
            bits=int(data["bits"]),
            max_weight=int(data["max_weight"]),
            stochastic=bool(data["stochastic"]),
        )


class Quantizer:
    """One client's encoding: its weight and random source, applied block by block."""

    def __init__(self, params: FieldParams, weight: int, rng: np.random.Generator | None = None):
        if not isinstance(weight, int | np.integer) or not 1 <= weight <= params.max_weight:
            raise ValueError(f"the weight (num_examples) must be an integer in 1..{params.max_weight}")
        self.params = params
        self.weight = int(weight)
        self.rng = rng if rng is not None else np.random.default_rng()

    def encode(self, values: np.ndarray) -> np.ndarray:
        """``weight · q(values)`` as ``uint64``; non-finite values are refused, not encoded."""
        x = np.asarray(values, dtype=np.float64).ravel()
        if not np.all(np.isfinite(x)):
            raise ValueError("an update with NaN or infinite values cannot be encoded")
        p = self.params
        scaled = (np.clip(x, -p.clip, p.clip) + p.clip) * p.scale
        q = np.floor(scaled + self.rng.random(scaled.shape)) if p.stochastic else np.rint(scaled)
        q = np.clip(q, 0, p.levels).astype(np.uint64)
        return q * np.uint64(self.weight)


def dequantize_sum(total: np.ndarray, weight_sum: int, params: FieldParams) -> np.ndarray:
    """The weighted mean (float64) from a block of the unmasked sum Σ wᵢ qᵢ and Σ wᵢ."""
    if weight_sum < 1:
        raise ValueError("the sum of weights must be positive")
    return np.asarray(total, dtype=np.uint64).astype(np.float64) / (params.scale * weight_sum) - params.clip
