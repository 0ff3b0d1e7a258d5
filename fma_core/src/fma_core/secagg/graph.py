"""The neighbour graph of SecAgg+ (Bell et al. 2020): who shares secrets and masks with whom.

The original SecAgg pairs every client with every other: n² key agreements and masks. SecAgg+
pairs each client with k = O(log n) neighbours instead. Here the graph is a Harary graph (a ring in
which each client is joined to the k/2 clients either side of it) laid over a permutation of the
participants drawn from the round's public seed: k-regular, k-connected, the same for everyone who
knows the roster and the seed, and no client picks its own neighbours. With k ≥ n − 1 it is the
complete graph, i.e. the original protocol.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def default_degree(n: int) -> int:
    """k for n participants: an even number near 3·log2(n), at least 4, at most n − 1."""
    if n <= 1:
        return 0
    k = max(4, 2 * int(np.ceil(1.5 * np.log2(n))))
    return min(k, n - 1)


def neighbour_graph(ids: Sequence[str], degree: int, seed: int) -> dict[str, frozenset[str]]:
    """Each participant's neighbours (never itself), symmetric, from the sorted roster and a seed."""
    roster = sorted(ids)
    n = len(roster)
    if len(set(roster)) != n:
        raise ValueError("participant ids must be distinct")
    if degree >= n - 1:
        return {i: frozenset(j for j in roster if j != i) for i in roster}
    if degree < 2 or degree % 2:
        raise ValueError("the degree of a sparse graph must be even and at least 2")
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, n]))).permutation(n)
    ring = [roster[int(p)] for p in order]
    half = degree // 2
    graph: dict[str, set[str]] = {i: set() for i in roster}
    for position, i in enumerate(ring):
        for step in range(1, half + 1):
            j = ring[(position + step) % n]
            graph[i].add(j)
            graph[j].add(i)
    return {i: frozenset(v) for i, v in graph.items()}
