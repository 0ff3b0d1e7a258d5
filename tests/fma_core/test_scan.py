"""scan(): one forward read gives an object's SHA-256 and its verdict as weights."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from fma_core.weights import TensorSpec, open_weights, to_bytes
from fma_core.weights.scan import scan

WEIGHTS = {  # fma.order differs from the order safetensors stores them in
    "z.weight": np.arange(3000, dtype=np.float32).reshape(30, 100),
    "a.steps": np.array([7], dtype=np.int64),
    "m.bias": np.ones(100, dtype=np.float64),
}


class ForwardOnly(io.RawIOBase):
    """A stream that cannot seek and answers reads in small pieces, like a network body."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = 1000 if size < 0 else min(size, 1000)
        piece = self._data[self._at : self._at + size]
        self._at += len(piece)
        return piece


def scanned(data: bytes, **options):
    return scan(ForwardOnly(data), size=len(data), **options)


def test_valid_weights_are_hashed_and_pass_in_one_forward_read():
    data = to_bytes(WEIGHTS)
    with open_weights(data) as reader:
        spec = TensorSpec.from_reader(reader)
    result = scanned(data, spec=spec)
    assert result.problem is None
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_a_file_is_read_into_the_arrays_and_hashed_the_same(tmp_path):
    data = to_bytes(WEIGHTS)
    with open_weights(data) as reader:
        spec = TensorSpec.from_reader(reader)
    (tmp_path / "w").write_bytes(data)
    (tmp_path / "cut").write_bytes(data[:-40])
    with open(tmp_path / "w", "rb") as file:
        whole = scan(file, size=len(data), spec=spec)
    with open(tmp_path / "cut", "rb") as file:
        cut = scan(file, size=len(data), spec=spec)
    assert whole == scanned(data, spec=spec)
    assert (whole.problem, whole.sha256) == (None, hashlib.sha256(data).hexdigest())
    assert "truncated" in str(cut.problem)
    assert (cut.size, cut.sha256) == (len(data) - 40, hashlib.sha256(data[:-40]).hexdigest())


@pytest.mark.parametrize(
    ("spoil", "message"),
    [(lambda d: d[:-40], "truncated"), (lambda d: b"\x01" * len(d), "header")],
)
def test_a_problem_is_reported_and_the_hash_still_covers_every_byte(spoil, message):
    data = spoil(to_bytes(WEIGHTS))
    result = scan(ForwardOnly(data), size=len(to_bytes(WEIGHTS)))
    assert message in str(result.problem)
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_bytes_beyond_the_expected_size_are_measured_for_the_caller_to_refuse():
    data = to_bytes(WEIGHTS) + b"\0" * 8
    result = scan(ForwardOnly(data), size=len(data) - 8)
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_nan_values_a_lying_header_and_a_wrong_spec_are_problems():
    bad = dict(WEIGHTS, **{"m.bias": np.full(100, np.nan)})
    assert "NaN" in str(scanned(to_bytes(bad)).problem)

    data = to_bytes(WEIGHTS)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["z.weight"]["data_offsets"][1] -= 4
    text = json.dumps(header).encode().ljust(length)
    assert scanned(data[:8] + text + data[8 + length :]).problem is not None

    spec = TensorSpec.from_json([{"name": "z.weight", "dtype": "F32", "shape": [30, 100]}])
    assert "unexpected tensors" in str(scanned(data, spec=spec).problem)
