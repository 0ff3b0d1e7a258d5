"""The tensor spec an experiment expects, and ``validate()``: the gate every update passes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fma_core.errors import InvalidWeights
from fma_core.weights.format import (
    DTYPES,
    ArrayReader,
    Source,
    TensorInfo,
    WeightsReader,
    open_weights,
    supported,
)

_NUMPY_NAMES = {dtype.name: code for code, dtype in DTYPES.items()}
"""numpy's names of the codes (``float32`` → ``F32``): what a numpy or PyTorch user writes first."""

_FINITE_BLOCK_BYTES = 32 << 20
"""Bytes of a tensor checked at once for NaN/Inf: one read each, so few round trips on S3
(a ranged GET per block), while memory stays at one block whatever the model's size."""


@dataclass(frozen=True)
class TensorSpec:
    """Names, dtypes and shapes of a model's tensors, in order."""

    tensors: tuple[TensorInfo, ...]

    @classmethod
    def from_reader(cls, reader: WeightsReader) -> TensorSpec:
        return cls(tuple(reader.tensors.values()))

    @classmethod
    def from_weights(cls, weights: Mapping[str, np.ndarray]) -> TensorSpec:
        return cls.from_reader(ArrayReader(weights))

    @classmethod
    def from_json(cls, data: Sequence[Mapping[str, object]]) -> TensorSpec:
        """Build from ``[{"name": ..., "dtype": "F32", "shape": [..]}, ...]``, checking each entry.

        A dtype is a safetensors code (``F32``) or numpy's name for it (``float32``); the spec holds
        the code, so ``to_json()`` gives the one form that is stored and echoed.
        """
        if not isinstance(data, list | tuple):
            raise InvalidWeights("a tensor spec is a list of {name, dtype, shape} objects")
        tensors = []
        for position, entry in enumerate(data):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise InvalidWeights(f"tensor spec entry {position} has no string 'name'")
            name, dtype, shape = entry["name"], entry.get("dtype"), entry.get("shape")
            dtype = _NUMPY_NAMES.get(dtype, dtype) if isinstance(dtype, str) else dtype
            if dtype not in DTYPES:
                raise InvalidWeights(
                    f"dtype {entry.get('dtype')!r} is not a numeric type FMA aggregates ({supported()}, "
                    f"or numpy's names: {', '.join(_NUMPY_NAMES)})",
                    tensor=name,
                )
            if not isinstance(shape, list | tuple) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
            ):
                raise InvalidWeights(f"shape {shape!r} is not a list of non-negative integers", tensor=name)
            tensors.append(TensorInfo(name, dtype, tuple(shape)))
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise InvalidWeights("a tensor spec names a tensor twice")
        return cls(tuple(tensors))

    def to_json(self) -> list[dict[str, object]]:
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.tensors]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def subset(self, names: Sequence[str]) -> TensorSpec:
        """The spec restricted to some tensors, in this spec's order (a shard of a round)."""
        wanted = set(names)
        unknown = wanted - set(self.names)
        if unknown:
            raise KeyError(f"not in the spec: {sorted(unknown)}")
        return TensorSpec(tuple(t for t in self.tensors if t.name in wanted))

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def check(self, tensors: Mapping[str, TensorInfo]) -> None:
        """Raise InvalidWeights naming the first tensor that is missing, extra, or of another shape or dtype."""
        expected = {t.name: t for t in self.tensors}
        missing = [name for name in expected if name not in tensors]
        if missing:
            raise InvalidWeights(
                f"missing tensors: {_names(missing)}", tensor=missing[0] if len(missing) == 1 else None
            )
        extra = [name for name in tensors if name not in expected]
        if extra:
            raise InvalidWeights(
                f"unexpected tensors: {_names(extra)}", tensor=extra[0] if len(extra) == 1 else None
            )
        for name, info in tensors.items():
            want = expected[name]
            if info.shape != want.shape:
                raise InvalidWeights(
                    f"shape {info.shape} does not match the expected {want.shape}", tensor=name
                )
            if info.dtype != want.dtype:
                raise InvalidWeights(
                    f"dtype {info.dtype} does not match the expected {want.dtype}", tensor=name
                )


def validate(
    source: Source | WeightsReader,
    spec: TensorSpec | None = None,
    *,
    max_bytes: int | None = None,
    check_finite: bool = True,
) -> TensorSpec:
    """Check weights before they are accepted; return their spec or raise InvalidWeights.

    Catches malformed, truncated or oversized files, headers that lie about their data,
    non-numeric dtypes, tensors missing, extra or of the wrong shape or dtype against ``spec``,
    and NaN or infinite values. Reads the data block by block, never the whole file at once.
    """
    if isinstance(source, WeightsReader):
        return _validate_reader(source, spec, check_finite)
    with open_weights(source, max_bytes=max_bytes) as reader:
        return _validate_reader(reader, spec, check_finite)


def _validate_reader(reader: WeightsReader, spec: TensorSpec | None, check_finite: bool) -> TensorSpec:
    if spec is not None:
        spec.check(reader.tensors)
    if check_finite:
        for info in reader.in_storage_order():
            if info.numpy_dtype.kind == "f" and not _all_finite(reader, info):
                raise InvalidWeights("contains NaN or infinite values", tensor=info.name)
    return TensorSpec.from_reader(reader)


def _all_finite(reader: WeightsReader, info: TensorInfo) -> bool:
    step = max(_FINITE_BLOCK_BYTES // info.numpy_dtype.itemsize, 1)
    buffer = np.empty(min(info.size, step), info.numpy_dtype)
    for start in range(0, info.size, step):
        block = reader.read_block(info.name, start, min(start + step, info.size), buffer)
        # min and max are NaN when any element is, and an infinity is one of them: an exact test
        # in two vectorized passes, about twice as fast as the float64 sum it replaces (which
        # also needed an element-wise test whenever finite values overflowed it).
        if not (np.isfinite(block.min()) and np.isfinite(block.max())):
            return False
    return True


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")
