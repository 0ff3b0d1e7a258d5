"""Local protection before a push: clip the update's change, optionally add Gaussian noise to it.

A data holder that does not want to rely on the server alone (``privacy`` on the experiment is
central DP: the server sees each update before it adds noise) clips its own change from the model
it pulled to L2 norm ``clip`` and may add N(0, (noise_multiplier·clip)²) to every element, drawn
from the operating system's cryptographically strong generator (``os.urandom``), before any byte
leaves. The push declares what it did in its metrics (``dp_local_clip``, ``dp_local_noise_stddev``),
so the developer sees it per round; the server cannot verify declared noise (noise looks like any
other change), and says so in docs/privacy.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fma_client.errors import FmaClientError

Weights = Mapping[str, np.ndarray]
DECLARED = ("dp_local_clip", "dp_local_noise_stddev")


@dataclass(frozen=True)
class LocalPrivacy:
    """Clip each pushed change to L2 norm ``clip`` (floating-point tensors, as the server measures it),
    then add Gaussian noise of standard deviation ``noise_multiplier × clip`` per element (0: none)."""

    clip: float
    noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise FmaClientError(f"LocalPrivacy.clip must be a finite number above 0, not {self.clip!r}")
        z = self.noise_multiplier
        if not (isinstance(z, int | float) and math.isfinite(z) and z >= 0):
            raise FmaClientError(f"LocalPrivacy.noise_multiplier must be a finite number ≥ 0, not {z!r}")

    @property
    def noise_stddev(self) -> float:
        return float(self.noise_multiplier * self.clip)

    def protect(self, change: Weights) -> dict[str, np.ndarray]:
        """The change clipped (and noised), each tensor in its own dtype; integer tensors unchanged."""
        floating = [name for name, value in change.items() if np.asarray(value).dtype.kind == "f"]
        norm = math.sqrt(sum(float(np.sum(np.asarray(change[n], np.float64) ** 2)) for n in floating))
        factor = min(1.0, self.clip / norm) if norm > 0 else 1.0
        out = {}
        for name, value in change.items():
            value = np.asarray(value)
            if name not in floating:
                out[name] = value
                continue
            protected = value.astype(np.float64) * factor
            if self.noise_multiplier > 0:
                protected += gaussian(value.size).reshape(value.shape) * self.noise_stddev
            out[name] = protected.astype(value.dtype)
        return out

    def declared(self) -> dict[str, float]:
        """The metrics a push declares its protection with."""
        return {"dp_local_clip": float(self.clip), "dp_local_noise_stddev": self.noise_stddev}


def gaussian(count: int) -> np.ndarray:
    """``count`` standard normals from the OS's cryptographically strong generator (Box–Muller on two
    53-bit uniforms each)."""
    words = np.frombuffer(os.urandom(16 * count), dtype="<u8").reshape(count, 2)
    u1 = ((words[:, 0] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
    u2 = (words[:, 1] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
