"""Shamir secret sharing over the prime field of the Mersenne prime 2^521 − 1.

Small enough to write and check here: a secret (a 32-byte key, below 2^256 < p) is the constant term
of a random polynomial of degree t − 1; each holder gets the polynomial at its own nonzero x. Any t
points give the secret back by Lagrange interpolation at 0; fewer reveal nothing about it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: int, threshold: int, xs: Iterable[int]) -> dict[int, int]:
    """The shares of ``secret`` at each x of ``xs`` (distinct, in 1..p−1); ``threshold`` rebuild it."""
    xs = list(xs)
    if not 0 <= secret < PRIME:
        raise ValueError("the secret must lie in the field")
    if threshold < 1 or threshold > len(xs):
        raise ValueError(f"threshold {threshold} needs between 1 and {len(xs)} holders")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and nonzero")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def combine(shares: Mapping[int, int], threshold: int) -> int:
    """The secret from at least ``threshold`` shares (x → y); raises ``ValueError`` below it."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares, {threshold} needed")
    points = sorted(shares.items())[:threshold]
    secret = 0
    for j, (xj, yj) in enumerate(points):
        numerator, denominator = 1, 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                numerator = numerator * xm % PRIME
                denominator = denominator * (xm - xj) % PRIME
        secret = (secret + yj * numerator * pow(denominator, -1, PRIME)) % PRIME
    return secret


def to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ValueError("a share is 66 bytes")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("a share lies in the field")
    return value
