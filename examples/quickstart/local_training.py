"""One data holder's round of local work, shared by ``client.py`` (a client process against the
service) and ``benchmarks/learning.py`` (the same clients in one process, without HTTP): both must
train the same way from the same random stream for their results to be comparable. A bad client's
attacks live here too, for the same reason.
"""

from __future__ import annotations

import zlib
from types import ModuleType

import numpy as np

Weights = dict[str, np.ndarray]


def data_name(index: int) -> str:
    """The file name of client ``index``'s slice of the data; it also keys the client's random stream."""
    return f"client-{index}.npz"


def client_rng(seed: int, data_name: str) -> np.random.Generator:
    """The client's own random stream: the run's seed and the name of its data file."""
    return np.random.default_rng([seed, zlib.crc32(data_name.encode())])


def local_update(
    model: ModuleType,
    weights: Weights,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    learning_rate: float,
    rng: np.random.Generator,
) -> Weights:
    """The model after training on (x, y); a client without examples sends back what it was given
    (it weighs nothing in fedavg)."""
    if not len(y):
        return weights
    return model.train(
        weights, x, y, epochs=epochs, learning_rate=learning_rate, seed=int(rng.integers(2**31))
    )


ATTACKS = ("noise", "signflip")
NOISE_SCALE = 5.0


def attacked_update(
    attack: str,
    model: ModuleType,
    weights: Weights,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    learning_rate: float,
    rng: np.random.Generator,
) -> Weights:
    """What a bad client pushes instead of its update: ``noise``, random weights of the right shape
    (``NOISE_SCALE`` × standard normal values), far from any model; ``signflip``, the model moved by the
    opposite of what it learned (base − change): as long as an honest change, so no norm bound sees it."""
    if attack == "noise":
        return {
            name: (rng.standard_normal(a.shape) * NOISE_SCALE).astype(a.dtype) for name, a in weights.items()
        }
    if attack == "signflip":
        trained = local_update(model, weights, x, y, epochs=epochs, learning_rate=learning_rate, rng=rng)
        return {name: (2 * a - trained[name]).astype(a.dtype) for name, a in weights.items()}
    raise ValueError(f"unknown attack {attack!r}: one of {', '.join(ATTACKS)}")
