"""Per-round client sampling: which of an experiment's enrolled clients a round takes.

The fraction C of McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (FedAvg, arXiv 1602.05629), Flower's ``fraction_fit``. A configuration
(``sampling_from_config``)::

    {"clients": 10}                       # ten clients a round
    {"fraction": 0.1, "min_clients": 2}   # a tenth of the enrolled clients, at least two
    # both take "seed" (a whole number; one is made when absent) and "mode":
    #   "uniform" (default): every set of that size equally likely;
    #   "longest_waiting": the clients whose last round is oldest first, ties by the seeded draw.

Round ``r``'s draw depends only on the seed, ``r``, the enrolled clients (sorted by id) and, in
``longest_waiting`` mode, the round each of them last took part in: numpy's
``Generator(PCG64(SeedSequence([seed, r])))`` permutes the sorted clients, so anyone can
recompute a recorded selection. Fewer enrolled clients than asked for: the round takes them all.

``longest_waiting`` is not usable with differential privacy: a DP accountant's amplification by
sampling assumes each round samples clients uniformly at random, which this mode does not do
(``check_for_privacy`` is the check a privacy setting makes).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fma_core.errors import ConfigurationError

MODES = ("uniform", "longest_waiting")
MAX_SEED = 2**63 - 1  # a signed 64-bit column holds it on every database


@dataclass(frozen=True)
class ClientSampling:
    """How many clients each round takes (``clients``, or ``fraction`` with at least ``min_clients``),
    drawn from ``seed`` in ``mode``."""

    seed: int
    clients: int | None = None
    fraction: float | None = None
    min_clients: int = 1
    mode: str = "uniform"

    def __post_init__(self) -> None:
        if (self.clients is None) == (self.fraction is None):
            raise ConfigurationError("client_sampling takes either 'clients' or 'fraction', not both or none")
        if self.clients is not None:
            _check_whole("clients", self.clients)
        else:
            fraction = self.fraction
            if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
                raise ConfigurationError(f"client_sampling: 'fraction' must be in (0, 1], not {fraction!r}")
        _check_whole("min_clients", self.min_clients)
        if not (
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED
        ):
            raise ConfigurationError(
                f"client_sampling: 'seed' must be a whole number from 0 to {MAX_SEED}, not {self.seed!r}"
            )
        if self.mode not in MODES:
            raise ConfigurationError(
                f"client_sampling: unknown mode {self.mode!r}; known: {', '.join(MODES)} "
                "(longest_waiting is not usable with differential privacy)"
            )

    def size(self, enrolled: int) -> int:
        """How many of ``enrolled`` clients a round takes."""
        if self.clients is not None:
            wanted = self.clients
        else:
            wanted = max(self.min_clients, math.ceil(self.fraction * enrolled))
        return min(wanted, enrolled)

    @property
    def uniform(self) -> bool:
        """Every client equally likely in every round: what a DP accountant assumes."""
        return self.mode == "uniform"

    def to_config(self) -> dict[str, Any]:
        size = {"clients": self.clients} if self.clients is not None else {"fraction": self.fraction}
        if self.fraction is not None:
            size["min_clients"] = self.min_clients
        return {**size, "seed": self.seed, "mode": self.mode}


def sampling_from_config(config: Mapping[str, Any] | None) -> ClientSampling | None:
    """The sampling a configuration asks for, None for every client each round; a seed is made when
    absent (store ``to_config()`` so that it stays the experiment's)."""
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise ConfigurationError(
            f"client_sampling is an object such as {{'clients': 10}} or {{'fraction': 0.1}}, not {config!r}"
        )
    known = {"clients", "fraction", "min_clients", "seed", "mode"}
    unknown = set(config) - known
    if unknown:
        raise ConfigurationError(
            f"client_sampling does not take {sorted(unknown)}; it takes {', '.join(sorted(known))}"
        )
    if "min_clients" in config and "fraction" not in config:
        raise ConfigurationError("client_sampling: 'min_clients' goes with 'fraction'")
    args = dict(config)
    seed = args.pop("seed", None)
    return ClientSampling(seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed, **args)


def draw(
    sampling: ClientSampling,
    round_number: int,
    enrolled: Iterable[str],
    last_round: Mapping[str, int] | None = None,
) -> tuple[str, ...]:
    """The clients round ``round_number`` takes, sorted: a function of its arguments alone.

    ``last_round``: the round each client last took part in (absent: never), read only in
    ``longest_waiting`` mode. The seeded permutation's first k clients are a uniform k-subset;
    longest-waiting sorts that permutation (stably) by last round, so the draw breaks ties.
    """
    pool = sorted(set(enrolled))
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([sampling.seed, round_number])))
    order = [pool[i] for i in rng.permutation(len(pool))]
    if not sampling.uniform:
        last = last_round or {}
        order.sort(key=lambda client: last.get(client, 0))
    return tuple(sorted(order[: sampling.size(len(pool))]))


def check_for_privacy(sampling: ClientSampling | None) -> None:
    """Refuse a sampling that differential privacy's accounting cannot use (it assumes uniform rounds)."""
    if sampling is not None and not sampling.uniform:
        raise ConfigurationError(
            f"client_sampling mode {sampling.mode!r} is not usable with differential privacy: the "
            "privacy accountant assumes each round samples clients uniformly; use mode 'uniform'"
        )


def _check_whole(name: str, value: object) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigurationError(
            f"client_sampling: {name!r} must be a whole number of at least 1, not {value!r}"
        )
