"""A fused multiply-add computed without one: the reference the weighted-sum kernel's bits are checked
against (``fma_core.aggregators.axpy``)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def fma_float32(a: np.float32, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """a·x + y rounded once to float32, elementwise: the product is exact in float64 (24 + 24 bits), the
    float64 sum s and its error e (TwoSum) hold the exact a·x + y, and its float32 rounding is s's,
    unless s is exactly halfway between two float32s: then e decides."""
    product = np.float64(a) * x.astype(np.float64)
    addend = y.astype(np.float64)
    total = product + addend
    product_part = total - addend
    error = (product - product_part) + (addend - (total - product_part))
    rounded = total.astype(np.float32)
    beyond = np.nextafter(rounded, np.where(total > rounded, np.inf, -np.inf).astype(np.float32))
    halfway = (rounded.astype(np.float64) + beyond.astype(np.float64)) / 2 == total
    toward_error = np.where(error > 0, np.maximum(rounded, beyond), np.minimum(rounded, beyond))
    return np.where(halfway & (error != 0), toward_error, rounded)


def fma_float64(a: np.float64, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """a·x + y rounded once to float64, elementwise, in exact rational arithmetic (slow: small arrays)."""
    return np.array(
        [
            float(Fraction(float(a)) * Fraction(float(u)) + Fraction(float(v)))
            for u, v in zip(x, y, strict=True)
        ]
    )
