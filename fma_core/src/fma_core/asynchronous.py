"""Asynchronous (buffered) rounds: an experiment's ``asynchronous`` setting.

Clients never wait for a round: each pulls the latest model, trains, pushes, and starts again. The
server closes a round every ``buffer`` (K) accepted updates, whatever model each was trained from
(FedBuff: Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022,
arXiv:2106.06639), takes each update's change from its own base, and discounts it by a function
s(τ) of its staleness τ: how many versions the global model moved on since that base (the round
being computed is r, the base was round b's aggregate (0: the initial model): τ = r − 1 − b).

With x the current global model, nᵢ each update's examples and Δᵢ its change::

    Δ = Σ nᵢ·s(τᵢ)·Δᵢ / Σ nᵢ        (FedBuff divides by K; with examples, by Σ nᵢ)
    x ← x + η·Δ                       (aggregator fedavg or mean: η = server_learning_rate)
    or one step of a server optimizer (fedavgm, fedadam, fedyogi, fedadagrad) from Δ

so a stale update shrinks the step instead of taking a fresh one's share, and with s ≡ 1, η = 1
and every update trained from x, the step is FedAvg's. The staleness functions:

- ``constant``: s(τ) = 1;
- ``fedbuff`` (the default): s(τ) = 1/√(1 + τ), FedBuff's;
- ``polynomial`` with ``a`` > 0: s(τ) = (1 + τ)^−a (Xie, Koyejo, Gupta, "Asynchronous Federated
  Optimization", 2019, arXiv:1903.03934: its s_a(t − τ));
- ``hinge`` with ``a`` > 0, ``b`` ≥ 0: s(τ) = 1 when τ ≤ b, else 1/(a·(τ − b) + 1) (Xie et al.).

Configuration (plain JSON, ``AsyncMode.from_config``)::

    {"buffer": 10, "staleness": {"function": "polynomial", "a": 0.5},
     "max_staleness": 20, "server_learning_rate": 1.0}

``max_staleness`` (optional): an update with τ above it is quarantined with the reason, as the
synchronous ``furthest_base_agg`` does. ``server_learning_rate`` (default 1.0) is fedavg's and
mean's η; a server optimizer keeps its own in its ``aggregator_params``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fma_core.errors import ConfigurationError
from fma_core.numbers import finite_number, is_whole
from fma_core.policies import Deadline, RoundPolicy, policy_from_config

REPORT_SECTION = "staleness"

# The aggregators an asynchronous round can run: each reads every update's change from its own base,
# weighted by its examples and discount. fedavg and mean become the buffered step x + η·Δ.
BUFFERED_STEP = frozenset({"fedavg", "mean", "avg_values_if_data", "average_layers"})
SERVER_OPTIMIZERS = frozenset({"fedavgm", "fedadam", "fedyogi", "fedadagrad"})
ASYNC_AGGREGATORS = BUFFERED_STEP | SERVER_OPTIMIZERS

_FUNCTIONS: Mapping[str, tuple[str, ...]] = {
    "constant": (),
    "fedbuff": (),
    "polynomial": ("a",),
    "hinge": ("a", "b"),
}


@dataclass(frozen=True)
class Staleness:
    """A staleness function s(τ): the factor an update τ versions old is discounted by."""

    function: str = "fedbuff"
    a: float | None = None
    b: float | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | None) -> Staleness:
        if config is None:
            return cls()
        if isinstance(config, str):
            config = {"function": config}
        if not isinstance(config, Mapping):
            raise ConfigurationError(
                f"asynchronous.staleness is a function name or an object with 'function', not {config!r}"
            )
        values = dict(config)
        name = values.pop("function", None)
        if name not in _FUNCTIONS:
            raise ConfigurationError(
                f"asynchronous.staleness: unknown function {name!r}; known: {', '.join(_FUNCTIONS)}"
            )
        takes = _FUNCTIONS[name]
        unknown = sorted(set(values) - set(takes))
        if unknown:
            raise ConfigurationError(
                f"asynchronous.staleness: {name!r} does not take {', '.join(unknown)}; "
                f"it takes {', '.join(takes) if takes else 'no parameters'}"
            )
        missing = [p for p in takes if p not in values]
        if missing:
            raise ConfigurationError(f"asynchronous.staleness: {name!r} needs {', '.join(missing)}")
        for param, value in values.items():
            if finite_number(value) is None:
                raise ConfigurationError(f"asynchronous.staleness: {param!r} must be a number, not {value!r}")
        if "a" in values and values["a"] <= 0:
            raise ConfigurationError(f"asynchronous.staleness: 'a' must be above 0, not {values['a']!r}")
        if "b" in values and values["b"] < 0:
            raise ConfigurationError(f"asynchronous.staleness: 'b' must be at least 0, not {values['b']!r}")
        return cls(name, *(float(values[p]) if p in values else None for p in ("a", "b")))

    def __call__(self, tau: int) -> float:
        if tau < 0:
            raise ValueError(f"a staleness is at least 0, not {tau}")
        if self.function == "constant":
            return 1.0
        if self.function == "fedbuff":
            return 1.0 / math.sqrt(1.0 + tau)
        if self.function == "polynomial":
            assert self.a is not None
            return (1.0 + tau) ** -self.a
        assert self.a is not None
        assert self.b is not None
        return 1.0 if tau <= self.b else 1.0 / (self.a * (tau - self.b) + 1.0)

    def to_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"function": self.function}
        config.update({p: getattr(self, p) for p in _FUNCTIONS[self.function]})
        return config


@dataclass(frozen=True)
class AsyncMode:
    """An experiment's ``asynchronous`` setting, parsed and checked."""

    buffer: int
    staleness: Staleness = Staleness()
    max_staleness: int | None = None
    server_learning_rate: float | None = None  # None: not given (1.0 for fedavg and mean)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> AsyncMode | None:
        """Parse the setting (None: synchronous rounds), refusing unknown names and bad values."""
        if config is None:
            return None
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"asynchronous is an object such as {{'buffer': 10}}, not {config!r}")
        known = ("buffer", "staleness", "max_staleness", "server_learning_rate")
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ConfigurationError(
                f"asynchronous: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        buffer = config.get("buffer")
        if not is_whole(buffer) or buffer < 1:
            raise ConfigurationError(
                f"asynchronous.buffer (K, the updates a round takes) must be a whole number of at least 1, not {buffer!r}"
            )
        max_staleness = config.get("max_staleness")
        if max_staleness is not None and (not is_whole(max_staleness) or max_staleness < 0):
            raise ConfigurationError(
                f"asynchronous.max_staleness must be a whole number of at least 0, not {max_staleness!r}"
            )
        rate = config.get("server_learning_rate")
        if rate is not None and (finite_number(rate) is None or rate <= 0):
            raise ConfigurationError(f"asynchronous.server_learning_rate must be above 0, not {rate!r}")
        return cls(
            buffer=buffer,
            staleness=Staleness.from_config(config.get("staleness")),
            max_staleness=max_staleness,
            server_learning_rate=float(rate) if rate is not None else None,
        )

    def to_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"buffer": self.buffer, "staleness": self.staleness.to_config()}
        if self.max_staleness is not None:
            config["max_staleness"] = self.max_staleness
        if self.server_learning_rate is not None:
            config["server_learning_rate"] = self.server_learning_rate
        return config

    def round_policy(self, deadline: Any = None) -> dict[str, Any]:
        """The round policy of an asynchronous experiment: K pending updates, or the experiment's own
        ``deadline`` policy (``check_round_policy``), whichever comes first."""
        buffered = {"policy": "require_x_updates", "x": self.buffer}
        return buffered if deadline is None else {"any_of": [buffered, deadline]}


def effective_policy(round_policy: Any, config: Mapping[str, Any] | None) -> RoundPolicy:
    """The policy the round engine applies: an asynchronous experiment's (``AsyncMode.round_policy``), else
    the experiment's own ``round_policy``."""
    mode = AsyncMode.from_config(config)
    return policy_from_config(mode.round_policy(round_policy) if mode is not None else round_policy)


def check_round_policy(config: Any) -> None:
    """Refuse a round policy an asynchronous experiment cannot have: only none or a ``deadline`` (which then
    closes a round with fewer than K updates). ``all_clients`` and ``min_fraction`` wait for clients, and
    a count is the buffer's job."""
    if config is None:
        return
    policy: RoundPolicy = policy_from_config(config)
    if not isinstance(policy, Deadline):
        raise ConfigurationError(
            "an asynchronous experiment closes a round every asynchronous.buffer updates; its round_policy "
            "may only add a deadline ({'policy': 'deadline', 'seconds': 600}), not "
            f"{policy.to_config()!r}"
        )


def check_aggregator(aggregator: str, mode: AsyncMode) -> None:
    """Refuse an aggregator an asynchronous round cannot run, and a server learning rate given twice."""
    if aggregator not in ASYNC_AGGREGATORS:
        raise ConfigurationError(
            f"aggregator {aggregator!r} cannot run asynchronous rounds: it compares or averages whole models, "
            "which mean nothing across stale bases, and cannot weigh updates by staleness; use one of "
            f"{', '.join(sorted(ASYNC_AGGREGATORS))}"
        )
    if aggregator in SERVER_OPTIMIZERS and mode.server_learning_rate is not None:
        raise ConfigurationError(
            f"asynchronous.server_learning_rate is fedavg's and mean's; {aggregator!r} takes its own "
            "server_learning_rate in aggregator_params"
        )


def staleness_of(round_number: int, base_round: int) -> int:
    """τ: how many versions old an update's base is when round ``round_number`` is computed."""
    return max(0, round_number - 1 - base_round)


def report(mode: AsyncMode, taus: Mapping[str, int]) -> dict[str, Any]:
    """The round's ``staleness`` section: the function, each update's τ and s(τ), and the mix (updates per τ)."""
    mix: dict[str, int] = {}
    for tau in sorted(taus.values()):
        mix[str(tau)] = mix.get(str(tau), 0) + 1
    return {
        "buffer": mode.buffer,
        "function": mode.staleness.to_config(),
        "updates": {u: {"tau": tau, "discount": mode.staleness(tau)} for u, tau in taus.items()},
        "mix": mix,
    }
