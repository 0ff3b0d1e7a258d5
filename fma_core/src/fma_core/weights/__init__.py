"""Weights: an ordered mapping tensor name → numpy array, stored and sent as safetensors."""

from fma_core.weights.format import (
    DTYPES,
    ArrayReader,
    ByteSource,
    SafetensorsReader,
    Source,
    TensorInfo,
    Weights,
    WeightsReader,
    content_id,
    dtype_code,
    load,
    open_weights,
    to_bytes,
    write_file,
)
from fma_core.weights.legacy import from_legacy_json, to_legacy_json
from fma_core.weights.spec import TensorSpec, validate

__all__ = [
    "DTYPES",
    "ArrayReader",
    "ByteSource",
    "SafetensorsReader",
    "Source",
    "TensorInfo",
    "TensorSpec",
    "Weights",
    "WeightsReader",
    "content_id",
    "dtype_code",
    "from_legacy_json",
    "load",
    "open_weights",
    "to_bytes",
    "to_legacy_json",
    "validate",
    "write_file",
]
