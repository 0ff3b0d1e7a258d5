"""Central differential privacy: clip each update, add calibrated Gaussian noise, account for the budget.

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018)
with the fixed denominator: each round's model change is

    Δ = (Σᵢ clip(Δᵢ, S) + N(0, (z_Δ·S)² I)) / m

where clip scales a change to L2 norm at most S, m is the experiment's ``expected_clients`` (never
the number that happened to arrive, which would make the noise depend on who came) and z_Δ the
update noise multiplier. Every update weighs the same (user-level DP: a client-declared number of
examples would make one client's weight, so the sensitivity, unbounded). The round engine turns
this into readers and coefficients every linear aggregator and server optimizer already uses:
each update's change is scaled by ``min(1, S/‖Δᵢ‖)·n/m`` (n the updates used), the aggregator's
equal coefficients 1/n make the sum over m, and the noise is added to the mean change in each block.

Adaptive clipping (Andrew et al., "Differentially Private Learning with Adaptive Clipping",
NeurIPS 2021): the bound follows the ``target_quantile`` γ of the updates' norms, geometrically,
``S ← S·exp(−η·(b̃ − γ))`` with b̃ the noised fraction of updates within the bound
(``(Σ 1[‖Δᵢ‖ ≤ S] + N(0, σ_b²)) / m``). The noise multiplier z an experiment sets is the whole
round's: the update's is ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)``, so the pair releases no more than one
Gaussian mechanism of multiplier z (their Theorem 1). The bound for round r + 1 is decided in
round r and kept in its report, so restarts and takeovers read it back unchanged.

Noise is drawn from ChaCha20 (``cryptography``) keyed by HMAC-SHA256 of a per-experiment secret and
the round, then of the tensor's name; element j of a tensor reads keystream bytes [16j, 16j + 16),
two 53-bit uniforms turned into one normal by Box–Muller. So any block, shard, retry or takeover of
round r draws exactly the same noise for the same element, and a sharded round stays bit-identical.
The secret lives in the metadata store only (``MetadataStore.privacy_secret``): never in the plan,
the lineage, the API or a log.

The accountant is Google's ``dp-accounting`` (RDP). FMA's client draw is public (its seed is in the
experiment's settings, the round's selection in its report, and the lineage names each update's
client), so no amplification by sampling is claimed: each client is charged one Gaussian mechanism
of multiplier z for every round its update went into, under the zero-out relation (a client's
update present, or replaced by nothing: sensitivity S with the fixed denominator). The experiment's
ε after a round is that of the client charged most; a round that would take it over the budget does
not run (``BudgetSpent``). Selected clients who drop out are charged nothing for that round: their
data reached no output.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fma_core.errors import ConfigurationError, FmaError

REPORT_SECTION = "privacy"
MAX_CLIENTS = 10**9
ACCOUNTANT = "RDP (dp-accounting), one Gaussian mechanism per round a client's update went into"
_BYTES_PER_ELEMENT = 16  # two 64-bit words: two 53-bit uniforms
_ELEMENTS_PER_BLOCK = 64 // _BYTES_PER_ELEMENT  # a ChaCha20 block is 64 bytes
_MAX_ELEMENTS = 2**32 * _ELEMENTS_PER_BLOCK  # ChaCha20's 32-bit block counter


class BudgetSpent(FmaError):
    """The next round would take the experiment's ε over its budget: it does not run."""


@dataclass(frozen=True)
class AdaptiveClip:
    """Andrew et al.'s geometric update towards the ``target_quantile`` of the updates' norms."""

    initial: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float | None = None  # σ_b; None: expected_clients / 20, the paper's choice


@dataclass(frozen=True)
class PrivacyPolicy:
    """An experiment's ``privacy``: the clip (fixed ``bound`` or ``adaptive``), the noise multiplier z,
    the fixed denominator m (``expected_clients``) and the budget (ε, δ)."""

    noise_multiplier: float
    expected_clients: int
    epsilon: float
    delta: float
    bound: float | None = None
    adaptive: AdaptiveClip | None = None

    @classmethod
    def from_config(cls, config: Any) -> PrivacyPolicy | None:
        """Parse ``privacy`` (None: no DP); ConfigurationError naming what is wrong."""
        if config is None:
            return None
        if not isinstance(config, Mapping):
            raise ConfigurationError(
                "privacy must be an object such as {'clip': {'bound': 1.0}, 'noise_multiplier': 1.0, "
                "'expected_clients': 20, 'epsilon': 8, 'delta': 1e-5}"
            )
        _known(config, ("clip", "noise_multiplier", "expected_clients", "epsilon", "delta"), "privacy")
        for name in ("clip", "noise_multiplier", "expected_clients", "epsilon", "delta"):
            if name not in config:
                raise ConfigurationError(f"privacy.{name} is missing")
        z = _positive(config["noise_multiplier"], "privacy.noise_multiplier")
        m = config["expected_clients"]
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_CLIENTS:
            shown = repr(m) if len(repr(m)) <= 40 else f"{repr(m)[:40]}…"
            raise ConfigurationError(
                f"privacy.expected_clients must be a whole number from 1 to {MAX_CLIENTS:,}, not {shown}"
            )
        epsilon = _positive(config["epsilon"], "privacy.epsilon")
        delta = _positive(config["delta"], "privacy.delta")
        if delta >= 1:
            raise ConfigurationError(f"privacy.delta must be below 1, not {delta!r}")
        clip = config["clip"]
        if not isinstance(clip, Mapping) or len(clip) != 1 or not ({"bound", "adaptive"} & set(clip)):
            raise ConfigurationError(
                "privacy.clip takes exactly one of {'bound': 1.0} or {'adaptive': {'initial': 0.1, "
                "'target_quantile': 0.5, 'learning_rate': 0.2}}"
            )
        if "bound" in clip:
            return cls(z, m, epsilon, delta, bound=_positive(clip["bound"], "privacy.clip.bound"))
        adaptive = clip["adaptive"]
        if not isinstance(adaptive, Mapping):
            raise ConfigurationError("privacy.clip.adaptive must be an object such as {'initial': 0.1}")
        where = "privacy.clip.adaptive"
        _known(adaptive, ("initial", "target_quantile", "learning_rate", "count_stddev"), where)
        if "initial" not in adaptive:
            raise ConfigurationError(f"{where}.initial (the first round's bound) is missing")
        quantile = _positive(adaptive.get("target_quantile", 0.5), f"{where}.target_quantile")
        if quantile >= 1:
            raise ConfigurationError(f"{where}.target_quantile must be in (0, 1), not {quantile!r}")
        stddev = adaptive.get("count_stddev")
        parsed = AdaptiveClip(
            initial=_positive(adaptive["initial"], f"{where}.initial"),
            target_quantile=quantile,
            learning_rate=_positive(adaptive.get("learning_rate", 0.2), f"{where}.learning_rate"),
            count_stddev=None if stddev is None else _positive(stddev, f"{where}.count_stddev"),
        )
        policy = cls(z, m, epsilon, delta, adaptive=parsed)
        if 2 * policy.count_stddev <= z:
            raise ConfigurationError(
                f"{where}: the clip count's noise (count_stddev {policy.count_stddev:g}) must exceed half "
                f"the noise multiplier ({z:g} / 2), or no noise is left for the update itself "
                "(z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)); raise count_stddev or expected_clients"
            )
        return policy

    @property
    def count_stddev(self) -> float:
        """σ_b, the noise on the count of updates within the bound (adaptive clipping only)."""
        assert self.adaptive is not None
        stddev = self.adaptive.count_stddev
        return stddev if stddev is not None else self.expected_clients / 20

    @property
    def update_noise_multiplier(self) -> float:
        """z_Δ: the noise on the clipped sum, in units of the bound (z itself with a fixed bound)."""
        z = self.noise_multiplier
        if self.adaptive is None:
            return z
        return (z**-2 - (2 * self.count_stddev) ** -2) ** -0.5


def _known(config: Mapping[str, Any], names: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise ConfigurationError(
            f"unknown key(s) {', '.join(map(str, unknown))} in {where}; it takes {', '.join(names)}"
        )


def _positive(value: Any, where: str) -> float:
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number <= 0:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}…"
        raise ConfigurationError(f"{where} must be a finite number above 0, not {shown}")
    return number


# Noise


def round_key(secret: bytes, round_number: int) -> bytes:
    """The key of one round's noise: HMAC-SHA256 of the experiment's secret and the round."""
    return hmac.new(secret, b"fma-dp/round/%d" % round_number, hashlib.sha256).digest()


def standard_normal(key: bytes, label: str, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of the standard normal stream ``label`` under ``key`` (float64): the same
    values whichever range asks for them."""
    if not 0 <= start <= stop <= _MAX_ELEMENTS:
        raise ConfigurationError(f"noise stream {label!r}: elements [{start}, {stop}) are out of range")
    stream_key = hmac.new(key, b"stream/" + label.encode(), hashlib.sha256).digest()
    first, skip = divmod(start, _ELEMENTS_PER_BLOCK)
    nonce = first.to_bytes(4, "little") + bytes(12)  # RFC 7539: a 32-bit block counter, then the nonce
    count = stop - start
    encryptor = Cipher(algorithms.ChaCha20(stream_key, nonce), mode=None).encryptor()
    stream = encryptor.update(bytes(skip * _BYTES_PER_ELEMENT + count * _BYTES_PER_ELEMENT))
    words = np.frombuffer(stream, dtype="<u8", offset=skip * _BYTES_PER_ELEMENT).reshape(count, 2)
    u1 = ((words[:, 0] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    u2 = (words[:, 1] >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


class RoundNoise:
    """One round's Gaussian noise on the mean change, ``stddev`` per element, keyed by the round."""

    def __init__(self, key: bytes, stddev: float) -> None:
        self._key = key
        self.stddev = stddev

    def __repr__(self) -> str:  # the key never reaches a log
        return f"RoundNoise(stddev={self.stddev!r})"

    def add(self, tensor: str, start: int, stop: int, values: np.ndarray) -> None:
        """Add elements [start, stop) of tensor ``tensor``'s noise to ``values``, in place."""
        noise = standard_normal(self._key, f"tensor/{tensor}", start, stop) * self.stddev
        np.add(values, noise.astype(values.dtype, copy=False), values)

    def count_noise(self) -> float:
        """The standard normal the round's clip count is noised with (adaptive clipping)."""
        return float(standard_normal(self._key, "clip-count", 0, 1)[0])


# The round's decision


@dataclass(frozen=True)
class PrivateRound:
    """What a round decided (plain JSON, in the plan): the bound, the factor each update's change is
    scaled by (clip × n/m), the noise on the mean change, and the ledger after the round."""

    bound: float
    next_bound: float
    factors: Mapping[str, float]
    noise_stddev: float
    epsilon: float
    charged_rounds: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PrivateRound:
        return cls(**data)

    def report(self, policy: PrivacyPolicy) -> dict[str, Any]:
        """The round's ``report["privacy"]``: the ledger and the mechanism; never a client's norm, nor how
        many updates were clipped (a count of the data, released without noise, would leak)."""
        return {
            "epsilon": self.epsilon,
            "delta": policy.delta,
            "budget_epsilon": policy.epsilon,
            "charged_rounds": self.charged_rounds,
            "noise_multiplier": policy.noise_multiplier,
            "update_noise_multiplier": policy.update_noise_multiplier,
            "clip_bound": self.bound,
            "next_clip_bound": self.next_bound,
            "clip_mode": "adaptive" if policy.adaptive is not None else "fixed",
            "expected_clients": policy.expected_clients,
            "noise_stddev": self.noise_stddev,
            "accountant": ACCOUNTANT,
        }


def current_bound(policy: PrivacyPolicy, last_report: Mapping[str, Any] | None) -> float:
    """This round's bound: the fixed one, or the one the previous round decided (its report)."""
    if policy.bound is not None:
        return policy.bound
    assert policy.adaptive is not None
    previous = (last_report or {}).get(REPORT_SECTION) or {}
    return float(previous.get("next_clip_bound", policy.adaptive.initial))


def decide(
    policy: PrivacyPolicy,
    norms: Mapping[str, float],
    bound: float,
    noise: RoundNoise | None,
    *,
    epsilon: float,
    charged_rounds: int,
) -> PrivateRound:
    """Clip factors (× n/m, the fixed denominator), the noise on the mean change and, with adaptive
    clipping, the next round's bound from the noised fraction of norms within this one. ``norms``:
    every update the round uses (finite)."""
    n, m = len(norms), policy.expected_clients
    factors = {u: min(1.0, bound / norm if norm > 0 else 1.0) * n / m for u, norm in norms.items()}
    next_bound = bound
    if policy.adaptive is not None:
        assert noise is not None
        within = sum(1 for norm in norms.values() if norm <= bound)
        fraction = (within + policy.count_stddev * noise.count_noise()) / m
        a = policy.adaptive
        next_bound = bound * math.exp(-a.learning_rate * (fraction - a.target_quantile))
    stddev = policy.update_noise_multiplier * bound / m
    return PrivateRound(bound, next_bound, factors, stddev, epsilon, charged_rounds)


# The accountant


def epsilon_spent(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` Gaussian mechanisms of multiplier ``noise_multiplier``, at ``delta``
    (dp-accounting's RDP accountant, add-or-remove-one)."""
    if rounds <= 0:
        return 0.0
    import dp_accounting  # imported here: a deployment without DP never loads it

    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)
    return float(accountant.get_epsilon(delta))


def charged_after(counts: Mapping[str, int], contributors: set[str] | frozenset[str]) -> int:
    """The most rounds any client will have been charged for once this round's contributors are."""
    before = max(counts.values(), default=0)
    return max([before, *(counts.get(client, 0) + 1 for client in contributors)])
