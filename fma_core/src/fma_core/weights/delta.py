"""Updates sent as deltas: the client pushes ``trained - base``, the round engine reads ``base + delta``.

Experiments whose clients clip, noise or compress what they send want the change, not the
model. Reading the sum back, block by block, keeps every aggregator exactly as it is and lets
updates trained from different bases (stale clients) aggregate correctly, each over its own base.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fma_core.errors import InvalidWeights
from fma_core.weights.format import TensorInfo, WeightsReader


class DeltaReader(WeightsReader):
    """The weights ``base + delta``, computed block by block as they are read; owns both readers."""

    def __init__(self, delta: WeightsReader, base: WeightsReader) -> None:
        self._delta, self._base = delta, base
        if list(delta.tensors.values()) != list(base.tensors.values()):
            self.close()
            raise InvalidWeights(
                "a delta must have exactly the tensors of the model it was trained from "
                "(names, order, dtypes and shapes)"
            )

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._delta.tensors

    def read_block(self, name: str, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        base = self._base.read_block(name, start, stop)
        delta = self._delta.read_block(name, start, stop)
        out = buffer[: stop - start] if buffer is not None else None
        return np.add(base, delta, out=out)

    def close(self) -> None:
        try:
            self._delta.close()
        finally:
            self._base.close()
