"""The original FMA's JSON weights: ``data`` is a list of layers, each a nested list of numbers.

That is what Keras ``model.get_weights()`` turned ``.tolist()`` gives, and what fma-connect
0.0.2 sends and receives. Layers become tensors named by position (``"0"``, ``"1"``, ...) unless
the experiment's spec names them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fma_core.errors import InvalidWeights
from fma_core.weights.format import Weights
from fma_core.weights.spec import TensorSpec


def from_legacy_json(data: object, spec: TensorSpec | None = None) -> Weights:
    """Weights from a JSON ``data`` value; dtypes and names from ``spec`` when given, else float32."""
    if not isinstance(data, list):
        raise InvalidWeights("'data' must be a list of layers, each a (nested) list of numbers")
    if spec is not None and len(data) != len(spec):
        raise InvalidWeights(f"'data' has {len(data)} layers, the experiment expects {len(spec)}")
    infos = list(spec) if spec is not None else [None] * len(data)
    weights: Weights = {}
    for position, (layer, info) in enumerate(zip(data, infos, strict=True)):
        name = info.name if info is not None else str(position)
        try:
            array = np.asarray(layer)
        except ValueError:
            raise InvalidWeights(
                f"layer {position} is not a rectangular array of numbers", tensor=name
            ) from None
        if array.dtype.kind not in "iuf":
            raise InvalidWeights(f"layer {position} is not a rectangular array of numbers", tensor=name)
        weights[name] = array.astype(info.numpy_dtype if info is not None else np.float32)
    return weights


def to_legacy_json(weights: Mapping[str, np.ndarray]) -> list[object]:
    """The JSON ``data`` value of weights: one nested list per tensor, in order."""
    return [np.asarray(array).tolist() for array in weights.values()]
