"""fma_core.weights.layout: aggregates written as header + raw data, readable by safetensors itself."""

from __future__ import annotations

import io

import numpy as np
import safetensors.numpy

from fma_core.weights import TensorSpec, load
from fma_core.weights.layout import ConcatStream, header_bytes

WEIGHTS = {
    "zeta": np.arange(7, dtype=np.float32),
    "alpha": np.arange(6, dtype=np.int64).reshape(2, 3),
    "mid": np.linspace(0, 1, 5).astype(np.float16),
    "scalar": np.array(3.5, dtype=np.float64),
    "empty": np.zeros((0, 4), dtype=np.float32),
}


def written(weights: dict[str, np.ndarray]) -> bytes:
    spec = TensorSpec.from_weights(weights)
    parts = [header_bytes(spec), *(a.tobytes() for a in weights.values())]
    return ConcatStream(parts).read()


def test_header_and_data_in_spec_order_are_a_safetensors_file_both_readers_agree_on():
    data = written(WEIGHTS)
    assert (8 + int.from_bytes(data[:8], "little")) % 8 == 0  # the data starts aligned
    theirs = safetensors.numpy.load(data)
    ours = load(data)
    assert list(ours) == list(WEIGHTS)  # the order is kept
    for name, array in WEIGHTS.items():
        np.testing.assert_array_equal(theirs[name], array)
        np.testing.assert_array_equal(ours[name], array)
        assert ours[name].dtype == array.dtype
        assert ours[name].shape == array.shape


def test_concat_stream_opens_each_stream_when_reached_and_closes_it_after():
    opened = []

    def opener(payload: bytes):
        def open_it():
            stream = io.BytesIO(payload)
            opened.append(stream)
            return stream

        return open_it

    stream = ConcatStream([b"head", opener(b"-one-"), memoryview(b"mid"), opener(b"-two")])
    assert stream.read(6) == b"head"  # a raw stream: one part at most per read
    assert opened == []
    assert stream.read(2) == b"-o"
    assert len(opened) == 1
    assert stream.read() == b"ne-mid-two"
    assert all(s.closed for s in opened)
    assert ConcatStream([b"ab", opener(b"c"), memoryview(b"")]).read() == b"abc"
    assert ConcatStream([]).read(10) == b""
