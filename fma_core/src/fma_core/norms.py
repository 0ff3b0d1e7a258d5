"""Norm bounds on updates: refuse, or clip, each update whose change from its base is too large.

A client pushing noise or a scaled-up update moves an average by as much as it likes; bounding the
L2 norm of each update's change (trained minus the model it was trained from) caps what one client
can do to a round, whatever the aggregator. An experiment's ``update_norm`` says how:

- ``{"mode": "refuse", "bound": 5.0}``: an update whose change is longer than 5 is quarantined,
  with its norm and the bound in the reason;
- ``{"mode": "clip", "bound": 5.0}``: each change is scaled by ``min(1, bound / ‖change‖)`` before
  any aggregator reads it (the clipping step central differential privacy builds on);
- ``"adaptive": {"multiplier": 3, "window": 5}`` instead of ``bound``: the bound is 3 × the median
  norm of the updates accepted by the last 5 committed rounds. The history is read back from those
  rounds' reports (``report["norms"]``, kept with each aggregate), so restarts and takeovers see it
  unchanged; before any round has left one, the bound is the multiplier × the median of the round's
  own norms (a median: a minority of attackers cannot raise it).

Only floating-point tensors count (integer tensors are counters and indices, not learned) and a
norm is computed in float64. The round engine measures every update once, in ``start_round``,
before the aggregator's prepare pass (one streaming read of each change, a few blocks in memory);
what it decided (each norm, the bound, each clip factor) travels in the round plan as plain JSON,
so every shard applies the same factors and a sharded round stays bit-identical.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fma_core.aggregators.base import UpdateInput, blocks
from fma_core.errors import ConfigurationError
from fma_core.weights import TensorSpec

MODES = ("refuse", "clip")
REPORT_SECTION = "norms"


@dataclass(frozen=True)
class Adaptive:
    """The bound as ``multiplier`` × the median norm of the updates accepted by the last ``window`` rounds."""

    multiplier: float = 3.0
    window: int = 5


@dataclass(frozen=True)
class NormPolicy:
    """An experiment's ``update_norm``: refuse or clip, at a fixed or an adaptive bound."""

    mode: Literal["refuse", "clip"]
    bound: float | None = None
    adaptive: Adaptive | None = None

    @classmethod
    def from_config(cls, config: Any) -> NormPolicy | None:
        """Parse ``update_norm`` (None: no bound); ConfigurationError naming what is wrong."""
        if config is None:
            return None
        if not isinstance(config, Mapping):
            raise ConfigurationError("update_norm must be an object such as {'mode': 'clip', 'bound': 5.0}")
        _known(config, ("mode", "bound", "adaptive"), "update_norm")
        mode = config.get("mode")
        if mode not in MODES:
            raise ConfigurationError(f"update_norm.mode must be one of {', '.join(MODES)}, not {mode!r}")
        if ("bound" in config) == ("adaptive" in config):
            raise ConfigurationError("update_norm takes either a fixed 'bound' or 'adaptive', exactly one")
        if "bound" in config:
            return cls(mode, bound=_positive(config["bound"], "update_norm.bound"))
        adaptive = config["adaptive"]
        if not isinstance(adaptive, Mapping):
            raise ConfigurationError(
                "update_norm.adaptive must be an object such as {'multiplier': 3, 'window': 5}"
            )
        _known(adaptive, ("multiplier", "window"), "update_norm.adaptive")
        window = adaptive.get("window", Adaptive.window)
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 100:
            raise ConfigurationError(
                f"update_norm.adaptive.window must be a whole number from 1 to 100, not {window!r}"
            )
        multiplier = _positive(
            adaptive.get("multiplier", Adaptive.multiplier), "update_norm.adaptive.multiplier"
        )
        return cls(mode, adaptive=Adaptive(multiplier, window))


def _known(config: Mapping[str, Any], names: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise ConfigurationError(
            f"unknown key(s) {', '.join(map(str, unknown))} in {where}; it takes {', '.join(names)}"
        )


def _positive(value: Any, where: str) -> float:
    try:  # a whole number too large for a float (JSON allows 1 followed by 400 zeros) overflows
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number <= 0:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}…"
        raise ConfigurationError(f"{where} must be a finite number above 0, not {shown}")
    return number


def measure(updates: Sequence[UpdateInput], spec: TensorSpec) -> dict[str, float]:
    """Each update's L2 norm of its change over the floating-point tensors, in one streaming read
    (``blocks``: N blocks in memory at a time); UpdateUnreadable names an update that cannot be read."""
    floating = TensorSpec(tuple(t for t in spec if t.numpy_dtype.kind == "f"))
    squares = [0.0] * len(updates)
    for _, values in blocks(updates, floating, changes=True):
        for i, value in enumerate(values):
            value = value.astype(np.float64, copy=False)
            squares[i] += float(np.dot(value, value))
    return {u.update_id: math.sqrt(s) for u, s in zip(updates, squares, strict=True)}


@dataclass(frozen=True)
class Screening:
    """What a round decided about its updates' norms: the bound, how it was found, and per update."""

    mode: str
    bound: float
    source: str  # "fixed", "recent rounds" or "this round"
    norms: Mapping[str, float]  # every measured update's norm
    refused: Mapping[str, str]  # update id → the reason it was quarantined
    clip: Mapping[str, float]  # update id → its clip factor, for the updates clipped (factor < 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "bound": self.bound,
            "source": self.source,
            "norms": dict(self.norms),
            "refused": dict(self.refused),
            "clip": dict(self.clip),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Screening:
        return cls(**data)

    def report(self, used: Iterable[str]) -> dict[str, Any]:
        """The round's ``report["norms"]``: the bound, and the norms (and clip factors) of the updates
        the round used and of those it refused; the next rounds' adaptive bounds read ``accepted``."""
        used = set(used)
        return {
            "mode": self.mode,
            "bound": self.bound,
            "source": self.source,
            "accepted": {u: n for u, n in self.norms.items() if u in used},
            "refused": {u: self.norms[u] for u in self.refused if u in self.norms},
            "clip": {u: f for u, f in self.clip.items() if u in used},
        }


def screen(policy: NormPolicy, norms: Mapping[str, float], history: Sequence[float]) -> Screening:
    """Decide the bound and, per update, refusal or clip factor. An update whose norm is not finite
    (a float64 change too large to square) is refused in either mode: no factor would be exact."""
    finite = {u: n for u, n in norms.items() if math.isfinite(n)}
    if policy.bound is not None:
        bound, source = policy.bound, "fixed"
    else:
        assert policy.adaptive is not None
        recent = history or list(finite.values())
        source = "recent rounds" if history else "this round"
        # no finite norm anywhere: every update is refused below, whatever the bound
        bound = policy.adaptive.multiplier * statistics.median(recent) if recent else 0.0
    refused = {u: "the norm of its change is not finite" for u, n in norms.items() if u not in finite}
    clip: dict[str, float] = {}
    described = _describe(bound, source, policy)
    for update_id, norm in finite.items():
        if norm <= bound:
            continue
        if policy.mode == "refuse":
            refused[update_id] = f"the norm of its change, {norm:.6g}, exceeds the bound {described}"
        else:
            clip[update_id] = bound / norm
    return Screening(policy.mode, bound, source, finite, refused, clip)


def _describe(bound: float, source: str, policy: NormPolicy) -> str:
    if policy.adaptive is None:
        return f"{bound:.6g}"
    return f"{bound:.6g} ({policy.adaptive.multiplier:g} × the median norm of {source})"


def recent_norms(reports: Iterable[Mapping[str, Any]]) -> list[float]:
    """The accepted updates' norms that the given rounds' reports recorded (rounds run without a bound,
    or before one was set, record none)."""
    return [
        float(norm)
        for report in reports
        for norm in (report.get(REPORT_SECTION) or {}).get("accepted", {}).values()
    ]
