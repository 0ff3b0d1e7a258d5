"""An experiment's ``secure_aggregation`` setting, and the settings it cannot be combined with.

``{"threshold": 0.6, "degree": null, "clip": 8.0, "bits": 24, "max_weight": 1048576,
"rounding": "stochastic", "stage_seconds": 300}`` — every key optional (these are the defaults).
``clip`` bounds each value a client sends (the field has a range; a weights update needs the
model's largest weight inside it, a delta only its largest change); ``bits`` is the precision in that
range; ``max_weight`` the most examples a client may claim (its weight in the mean).

Secure aggregation hides each update from the server, so any server-side rule that reads an
individual update cannot run: :func:`conflicts` names each such setting, one message per conflict,
for the experiment services to refuse at creation with a 400. It is one function, taking settings
by name, so a new mode (asynchronous rounds, central differential privacy) adds one rule here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fma_core.errors import ConfigurationError
from fma_core.numbers import finite_number, is_whole
from fma_core.secagg.field import FieldParams

# The aggregators whose result is a function of the (weighted) sum of the updates alone.
SUM_AGGREGATORS = frozenset({"fedavg", "mean"})
# The robust rules: each needs every update (distances, coordinate-wise order statistics).
ROBUST_AGGREGATORS = frozenset({"krum", "bulyan", "median", "trimmed_mean"})
_KEYS = {"threshold", "degree", "clip", "bits", "max_weight", "rounding", "stage_seconds"}


@dataclass(frozen=True)
class SecureAggregation:
    """The parsed setting: the field encoding, the share threshold, the graph degree, the stage deadline."""

    field: FieldParams
    threshold: float = 0.6
    degree: int | None = None
    stage_seconds: float = 300.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> SecureAggregation | None:
        if config is None:
            return None
        if not isinstance(config, Mapping):
            raise ConfigurationError("secure_aggregation: an object, e.g. {} for the defaults")
        unknown = set(config) - _KEYS
        if unknown:
            raise ConfigurationError(
                f"secure_aggregation: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}"
            )
        rounding = config.get("rounding", "stochastic")
        if rounding not in ("stochastic", "nearest"):
            raise ConfigurationError("secure_aggregation.rounding: 'stochastic' or 'nearest'")
        clip = finite_number(config.get("clip", 8.0))
        if clip is None:
            raise ConfigurationError(f"secure_aggregation.clip: a number, not {_shown(config['clip'])}")
        for name in ("bits", "max_weight"):
            if name in config and not is_whole(config[name]):
                raise ConfigurationError(
                    f"secure_aggregation.{name}: a whole number, not {_shown(config[name])}"
                )
        try:
            field = FieldParams(
                clip=clip,
                bits=config.get("bits", 24),
                max_weight=config.get("max_weight", 2**20),
                stochastic=rounding == "stochastic",
            )
        except ValueError as error:
            raise ConfigurationError(f"secure_aggregation: {error}") from None
        threshold = finite_number(config.get("threshold", 0.6))
        if threshold is None or not 0.5 < threshold <= 1:
            raise ConfigurationError(
                "secure_aggregation.threshold: a fraction of each neighbourhood in (0.5, 1]; above one half, "
                "no two disjoint groups of neighbours can each rebuild one of a client's secrets"
            )
        degree = config.get("degree")
        if degree is not None and (not is_whole(degree) or degree < 2 or degree % 2):
            raise ConfigurationError("secure_aggregation.degree: an even number of neighbours, at least 2")
        stage_seconds = finite_number(config.get("stage_seconds", 300))
        if stage_seconds is None or not 1 <= stage_seconds <= 86400:
            raise ConfigurationError(
                "secure_aggregation.stage_seconds: a number of seconds between 1 and 86400"
            )
        return cls(field, threshold, degree, stage_seconds)

    def to_config(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "degree": self.degree,
            "clip": self.field.clip,
            "bits": self.field.bits,
            "max_weight": self.field.max_weight,
            "rounding": "stochastic" if self.field.stochastic else "nearest",
            "stage_seconds": self.stage_seconds,
        }


def conflicts(
    *,
    aggregator: str,
    update_norm: Any = None,
    legacy_mode: bool = False,
    asynchronous: Any = None,
    privacy: Any = None,
) -> list[str]:
    """What in an experiment's other settings secure aggregation cannot honour, one message each."""
    found = []
    if aggregator in ROBUST_AGGREGATORS:
        found.append(
            f"aggregator: {aggregator!r} compares the updates one by one, and secure aggregation gives the "
            f"server only their sum; use one of {sorted(SUM_AGGREGATORS)}"
        )
    elif aggregator not in SUM_AGGREGATORS:
        found.append(
            f"aggregator: {aggregator!r} is not built on the secure sum yet (a server optimizer needs only "
            f"the mean change, so it could be); use one of {sorted(SUM_AGGREGATORS)}"
        )
    if update_norm:
        found.append(
            "update_norm: the server cannot measure an update it never sees; bound what clients send with "
            "secure_aggregation.clip instead"
        )
    if legacy_mode:
        found.append(
            "legacy_mode: fma-connect clients send plain JSON updates; secure aggregation needs fma-client"
        )
    if asynchronous:
        found.append(
            "asynchronous: a secure round sums a fixed set of clients through four stages; buffered "
            "asynchronous rounds take updates one by one"
        )
    if privacy:
        found.append(
            "privacy: central differential privacy clips and noises each update on the server, which "
            "secure aggregation keeps from it (noise added by the clients is not built yet)"
        )
    return found


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}…"
