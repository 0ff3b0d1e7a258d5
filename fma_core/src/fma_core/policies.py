"""Round policies ("requirements" in the original FMA): when the pending updates make a round.

Pure functions of plain data (``RoundState``), no ORM objects, so every store and runner
shares them. Policies compose: ``{"any_of": [{"policy": "all_clients"},
{"policy": "deadline", "seconds": 600, "min_updates": 3}]}`` closes a round when everyone has
reported, or after ten minutes with at least three updates.

Accepted configurations (``policy_from_config``):

- ``None`` — any pending update makes a round (the original's behaviour without a requirement);
- ``"all_clients"`` or ``{"policy": "all_clients"}``;
- ``{"policy": "require_x_updates", "x": 5}``, or the original's
  ``{"requirement": "require_x_updates", "requirement_args": [5]}``;
- ``{"policy": "min_fraction", "fraction": 0.5}``;
- ``{"policy": "deadline", "seconds": 600, "min_updates": 1}``;
- ``{"any_of": [...]}`` and ``{"all_of": [...]}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fma_core.errors import ConfigurationError


@dataclass(frozen=True)
class PendingUpdate:
    """What a policy may know of one pending update."""

    client_id: str
    received_at: float


@dataclass(frozen=True)
class RoundState:
    """The pending updates of an experiment, its enrolled clients, and the time now (epoch seconds)."""

    updates: tuple[PendingUpdate, ...]
    enrolled_clients: frozenset[str]
    now: float

    @property
    def participants(self) -> frozenset[str]:
        return frozenset(u.client_id for u in self.updates)

    @property
    def opened_at(self) -> float | None:
        """A round opens when its first update arrives."""
        return min((u.received_at for u in self.updates), default=None)


class RoundPolicy(ABC):
    """Decides from a RoundState whether a round should run now."""

    @abstractmethod
    def is_ready(self, state: RoundState) -> bool: ...

    def wakeup_at(self, state: RoundState) -> float | None:
        """When time alone could make the policy ready (a deadline), for schedulers; else None."""
        return None

    def fewest_updates(self) -> int | None:
        """The fewest pending updates with which this policy can call a round ready, whatever the enrollment;
        None when that depends on how many clients enroll. An experiment whose algorithm needs more
        (Krum's 2f + 3) is refused such a policy."""
        return None

    def least_updates(self) -> int:
        """With fewer pending updates than this the policy is not ready and ``wakeup_at`` is None, whatever
        the clients and the time: the engine then counts the updates instead of reading them."""
        return 1

    @abstractmethod
    def to_config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class AllClients(RoundPolicy):
    """Every enrolled client has sent an update (the original's ``all_clients``)."""

    def is_ready(self, state: RoundState) -> bool:
        return bool(state.updates) and state.enrolled_clients <= state.participants

    def to_config(self) -> dict[str, Any]:
        return {"policy": "all_clients"}


@dataclass(frozen=True)
class RequireXUpdates(RoundPolicy):
    """At least ``x`` pending updates (the original's ``require_x_updates``: updates, not clients)."""

    x: int

    def __post_init__(self) -> None:
        _check_count("x", self.x)

    def is_ready(self, state: RoundState) -> bool:
        return len(state.updates) >= self.x

    def fewest_updates(self) -> int:
        return self.x

    def least_updates(self) -> int:
        return self.x

    def to_config(self) -> dict[str, Any]:
        return {"policy": "require_x_updates", "x": self.x}


@dataclass(frozen=True)
class MinFraction(RoundPolicy):
    """At least ``fraction`` of the enrolled clients have sent an update."""

    fraction: float

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, int | float) and 0 < self.fraction <= 1):
            raise ConfigurationError(f"min_fraction: 'fraction' must be in (0, 1], not {self.fraction!r}")

    def is_ready(self, state: RoundState) -> bool:
        enrolled = len(state.enrolled_clients)
        joined = len(state.participants & state.enrolled_clients)
        return enrolled > 0 and joined >= self.fraction * enrolled

    def to_config(self) -> dict[str, Any]:
        return {"policy": "min_fraction", "fraction": self.fraction}


@dataclass(frozen=True)
class Deadline(RoundPolicy):
    """``seconds`` after the round's first update, close with what arrived if at least ``min_updates``."""

    seconds: float
    min_updates: int = 1

    def __post_init__(self) -> None:
        if not (
            isinstance(self.seconds, int | float) and not isinstance(self.seconds, bool) and self.seconds >= 0
        ):
            raise ConfigurationError(
                f"deadline: 'seconds' must be a non-negative number, not {self.seconds!r}"
            )
        _check_count("min_updates", self.min_updates)

    def is_ready(self, state: RoundState) -> bool:
        opened = state.opened_at
        return (
            opened is not None
            and len(state.updates) >= self.min_updates
            and state.now >= opened + self.seconds
        )

    def wakeup_at(self, state: RoundState) -> float | None:
        opened = state.opened_at
        if opened is None or len(state.updates) < self.min_updates:
            return None
        return opened + self.seconds

    def fewest_updates(self) -> int:
        return self.min_updates

    def least_updates(self) -> int:
        return self.min_updates

    def to_config(self) -> dict[str, Any]:
        return {"policy": "deadline", "seconds": self.seconds, "min_updates": self.min_updates}


@dataclass(frozen=True)
class AnyOf(RoundPolicy):
    """Ready when any of its policies is."""

    policies: tuple[RoundPolicy, ...]

    def is_ready(self, state: RoundState) -> bool:
        return any(p.is_ready(state) for p in self.policies)

    def wakeup_at(self, state: RoundState) -> float | None:
        return min((t for p in self.policies if (t := p.wakeup_at(state)) is not None), default=None)

    def fewest_updates(self) -> int | None:
        """Any policy of a fixed count can close the round alone."""
        return min((n for p in self.policies if (n := p.fewest_updates()) is not None), default=None)

    def least_updates(self) -> int:
        return min(p.least_updates() for p in self.policies)

    def to_config(self) -> dict[str, Any]:
        return {"any_of": [p.to_config() for p in self.policies]}


@dataclass(frozen=True)
class AllOf(RoundPolicy):
    """Ready when all of its policies are."""

    policies: tuple[RoundPolicy, ...]

    def is_ready(self, state: RoundState) -> bool:
        return all(p.is_ready(state) for p in self.policies)

    def wakeup_at(self, state: RoundState) -> float | None:
        times = [p.wakeup_at(state) for p in self.policies if not p.is_ready(state)]
        return None if not times or None in times else max(times)

    def fewest_updates(self) -> int | None:
        """Every policy must hold; with one that depends on the enrollment, so does the whole."""
        counts = [p.fewest_updates() for p in self.policies]
        return None if None in counts else max(counts)

    def least_updates(self) -> int:
        return max(p.least_updates() for p in self.policies)

    def to_config(self) -> dict[str, Any]:
        return {"all_of": [p.to_config() for p in self.policies]}


_POLICIES: Mapping[str, type[RoundPolicy]] = {
    "all_clients": AllClients,
    "require_x_updates": RequireXUpdates,
    "min_fraction": MinFraction,
    "deadline": Deadline,
}


def policy_from_config(config: str | Mapping[str, Any] | None) -> RoundPolicy:
    """Build a policy from its JSON configuration, refusing anything unknown or malformed."""
    if config is None:
        return RequireXUpdates(1)
    if isinstance(config, str):
        config = {"policy": config}
    if not isinstance(config, Mapping):
        raise ConfigurationError(f"a round policy is a name or an object, not {config!r}")
    for combinator, cls in (("any_of", AnyOf), ("all_of", AllOf)):
        if combinator in config:
            children = config[combinator]
            if (
                len(config) != 1
                or not isinstance(children, Sequence)
                or isinstance(children, str)
                or not children
            ):
                raise ConfigurationError(
                    f"{combinator!r} takes a non-empty list of policies and nothing else"
                )
            return cls(tuple(policy_from_config(child) for child in children))
    if "requirement" in config:
        return _legacy(config)
    args = dict(config)
    name = args.pop("policy", None)
    if name not in _POLICIES:
        raise ConfigurationError(
            f"unknown round policy {name!r}; known: {', '.join(_POLICIES)}, any_of, all_of"
        )
    try:
        return _POLICIES[name](**args)
    except TypeError:
        raise ConfigurationError(f"round policy {name!r} does not take {sorted(args)}") from None


def _legacy(config: Mapping[str, Any]) -> RoundPolicy:
    name, args = config["requirement"], config.get("requirement_args") or []
    if not isinstance(args, list) or set(config) - {"requirement", "requirement_args"}:
        raise ConfigurationError("the original form is {'requirement': name, 'requirement_args': [...]}")
    if name == "all_clients" and not args:
        return AllClients()
    if name == "require_x_updates" and len(args) == 1:
        return RequireXUpdates(args[0])
    raise ConfigurationError(
        f"requirement {name!r} with arguments {args} is not one the original FMA defined"
    )


def _check_count(name: str, value: object) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigurationError(f"{name!r} must be a whole number of at least 1, not {value!r}")
