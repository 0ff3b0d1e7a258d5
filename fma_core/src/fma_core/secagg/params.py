"""The public parameters of one secure round, which the server announces and every client checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fma_core.secagg.field import FieldParams
from fma_core.secagg.graph import default_degree, neighbour_graph


@dataclass(frozen=True)
class RoundParams:
    """A round's context (experiment, round number), threshold rule, graph seed and field encoding.

    ``threshold`` is a fraction of a neighbourhood: each client's secrets are split among its k
    neighbours so that ``t = max(2, ceil(threshold · k))`` of them rebuild them (a fraction above
    1/2 means no two disjoint sets of neighbours can each rebuild a secret, which is what stops a
    server from asking for both of a client's secrets).
    """

    experiment: str
    round: int
    graph_seed: int
    threshold: float = 0.6
    degree: int | None = None
    field: FieldParams = field(default_factory=FieldParams)

    def __post_init__(self) -> None:
        if not 0.5 < self.threshold <= 1.0:
            raise ValueError("threshold must be a fraction in (0.5, 1]")
        if self.degree is not None and (self.degree < 2 or self.degree % 2):
            raise ValueError("degree must be an even number of at least 2")

    @property
    def context(self) -> bytes:
        return f"fma-secagg/v1|{self.experiment}|{self.round}".encode()

    def degree_for(self, n: int) -> int:
        return min(self.degree, n - 1) if self.degree is not None else default_degree(n)

    def shares_needed(self, n: int) -> int:
        """t for a roster of n: of a client's k neighbours, how many must answer to rebuild its secrets."""
        k = self.degree_for(n)
        return min(k, max(2, math.ceil(round(self.threshold * k, 9))))

    def graph(self, ids: list[str]) -> dict[str, frozenset[str]]:
        return neighbour_graph(ids, self.degree_for(len(ids)), self.graph_seed)

    def as_json(self) -> dict:
        return {
            "experiment": self.experiment,
            "round": self.round,
            "graph_seed": self.graph_seed,
            "threshold": self.threshold,
            "degree": self.degree,
            "field": self.field.as_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> RoundParams:
        return cls(
            experiment=str(data["experiment"]),
            round=int(data["round"]),
            graph_seed=int(data["graph_seed"]),
            threshold=float(data["threshold"]),
            degree=None if data.get("degree") is None else int(data["degree"]),
            field=FieldParams.from_json(data["field"]),
        )
