"""The quickstart's data: scikit-learn's handwritten digits, shipped with the package (no download).

1,797 8×8 images of the digits 0–9. A fixed quarter is held out to measure the global model;
the rest is split across clients non-IID: for every class, the share each client gets is drawn
from a Dirichlet(α) distribution (small α: each client sees mostly a few digits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = 10
FEATURES = 64


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load(seed: int = 0) -> Split:
    from sklearn.datasets import load_digits  # imported here: the client processes never need it
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return Split(x_train, y_train, x_test, y_test)


def dirichlet_partition(labels: np.ndarray, *, clients: int, alpha: float, seed: int = 0) -> list[np.ndarray]:
    """Indices of each client's examples: per class, Dirichlet(α) shares across the clients."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(clients)]
    for label in range(CLASSES):
        indices = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet([alpha] * clients)
        cuts = (np.cumsum(shares) * len(indices)).astype(int)[:-1]
        for part, chunk in zip(parts, np.split(indices, cuts), strict=True):
            part.extend(chunk.tolist())
    return [np.array(sorted(part), dtype=np.int64) for part in parts]


def save_slice(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """One data holder's own examples, as a file on "its" disk (the quickstart simulates them)."""
    np.savez(path, x=x, y=y)


def load_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["x"], data["y"]
