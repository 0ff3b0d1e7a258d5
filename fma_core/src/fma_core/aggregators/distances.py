"""Pairwise squared distances between a round's updates, and the Krum scores and selections built on them.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS
2017 (Krum, Multi-Krum); El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018 (Bulyan's selection by iterated Krum).

The distances are between the updates' weights, the vectors that are then averaged, as in both
papers and in Flower: for updates trained from one model they equal the distances between their
changes, and a stale update's older base rightly counts as distance from the rest. They need no
initial model (a change does).

One streamed pass reads every update once (``blocks``): memory is the N × N matrix of float64
scalars and one block of every update (the block shrinks as N grows so the N blocks stay a few MiB,
in cache), never N models. Per block, the values are taken in float64 relative to one update's
(distances do not change) and the block's Gram matrix is one BLAS call; the distances come from the
summed Gram matrix, ‖a − b‖² = ‖a‖² + ‖b‖² − 2a·b. Its rounding error scales with the centred
values' size, so the first block is centred on its coordinate-wise median and each later one on the
update with the smallest sum of distances found so far (a medoid): a huge outlier is never the
centre, and the distances between the others keep their precision.

The Gram products run on one BLAS thread (``threadpoolctl``): OpenBLAS's own threads busy-wait for
one another, and on a machine whose cores are busy with anything else (the aggregation's threads,
another round, another process) that made the pass up to 60 times slower (measured: 97 ms against
1.5 ms for one block of 100 updates, at a load average of 15 on 2 cores).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from fma_core.aggregators.base import UpdateInput, blocks
from fma_core.weights import TensorSpec

STACK_BYTES = 4 << 20  # one float64 block of every update


def block_elements(count: int) -> int:
    """Elements per block for ``count`` updates: N blocks of float64 in about ``STACK_BYTES``."""
    return max(256, STACK_BYTES // (8 * count))


def squared_distances(updates: Sequence[UpdateInput], spec: TensorSpec) -> np.ndarray:
    """The N × N float64 matrix of squared Euclidean distances between the updates' weights (all tensors
    of ``spec``, flattened), in the given order; zero diagonal, symmetric."""
    count = len(updates)
    step = min(block_elements(count), max((info.size for info in spec), default=1))
    gram = np.zeros((count, count))
    stack = np.empty((count, step))
    centre = None  # the first block is centred on its coordinate-wise median
    with threadpool_limits(limits=1, user_api="blas"):
        for _, values in blocks(updates, spec, block_elements=step):
            rows = stack[:, : len(values[0])]
            if centre is None:
                for row, value in zip(rows, values, strict=True):
                    row[...] = value
                rows -= np.median(rows, axis=0)
            else:
                for row, value in zip(rows, values, strict=True):
                    np.subtract(value, values[centre], out=row, dtype=np.float64)
            gram += rows @ rows.T
            norms = np.diag(gram)  # Σⱼ dᵢⱼ = N·gᵢᵢ + Σⱼ gⱼⱼ − 2·Σⱼ gᵢⱼ: the medoid without the matrix
            centre = int(np.argmin(count * norms - 2 * gram.sum(axis=1)))
    return _from_gram(gram)


def _from_gram(gram: np.ndarray) -> np.ndarray:
    norms = np.diag(gram)
    distances = norms[:, None] + norms[None, :] - 2 * gram
    distances = np.maximum((distances + distances.T) / 2, 0)  # exact symmetry; rounding never below 0
    np.fill_diagonal(distances, 0)
    return distances


def krum_scores(distances: np.ndarray, f: int) -> np.ndarray:
    """Each update's Krum score: the sum of its squared distances to its N − f − 2 nearest others (at
    least one), summed nearest first so the result does not depend on the order of the others."""
    count = len(distances)
    nearest = max(1, count - f - 2)
    others = distances + np.diag(np.full(count, np.inf))  # never its own neighbour
    return np.sort(others, axis=1)[:, :nearest].sum(axis=1)


def best(scores: np.ndarray, m: int) -> list[int]:
    """The positions of the m lowest scores, lowest first; a tie goes to the earlier position (the
    canonical order), so the selection is deterministic."""
    return [int(i) for i in np.argsort(scores, kind="stable")[:m]]


def iterated_krum(distances: np.ndarray, f: int, count: int) -> list[int]:
    """Bulyan's selection: ``count`` times, the Krum choice among the updates not chosen yet (scores over
    those alone, at least one neighbour), in the order chosen."""
    remaining = list(range(len(distances)))
    chosen = []
    for _ in range(count):
        scores = krum_scores(distances[np.ix_(remaining, remaining)], f)
        chosen.append(remaining.pop(best(scores, 1)[0]))
    return chosen
