"""The quickstart's model: multinomial logistic regression in numpy, trained with mini-batch SGD.

Two tensors, ``dense.weight`` (64 × 10) and ``dense.bias`` (10), float32 — small enough to read,
and convex, so federated averaging can reach the accuracy of training on the pooled data.
"""

from __future__ import annotations

import numpy as np

from digits import CLASSES, FEATURES

Weights = dict[str, np.ndarray]


def initial_weights(seed: int = 0) -> Weights:
    rng = np.random.default_rng(seed)
    return {
        "dense.weight": (rng.standard_normal((FEATURES, CLASSES)) * 0.01).astype(np.float32),
        "dense.bias": np.zeros(CLASSES, np.float32),
    }


def train(
    weights: Weights,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    learning_rate: float = 0.5,
    batch_size: int = 32,
    l2: float = 1e-4,
    seed: int = 0,
) -> Weights:
    """A copy of ``weights`` after ``epochs`` passes of SGD on (x, y); the input is not modified."""
    w = weights["dense.weight"].copy()
    b = weights["dense.bias"].copy()
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            grad = _softmax(x[batch] @ w + b)
            grad[np.arange(len(batch)), y[batch]] -= 1
            w -= learning_rate * (x[batch].T @ grad / len(batch) + l2 * w)
            b -= learning_rate * grad.mean(axis=0)
    return {"dense.weight": w, "dense.bias": b}


def accuracy(weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
    predictions = (x @ weights["dense.weight"] + weights["dense.bias"]).argmax(axis=1)
    return float((predictions == y).mean())


def loss(weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
    probabilities = _softmax(x @ weights["dense.weight"] + weights["dense.bias"])
    return float(-np.log(probabilities[np.arange(len(y)), y] + 1e-12).mean())


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
