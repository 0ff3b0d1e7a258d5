"""open_weights on S3: the header from one small GET, tensors by byte range, every header check kept."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from botocore.exceptions import ResponseStreamingError

from fma_core.errors import InvalidWeights, StoreUnavailable
from fma_core.weights import load, to_bytes
from fma_s3.read_ahead import DEFAULT_CHUNK
from fma_s3.reading import HEADER_PREFETCH, READ_ATTEMPTS

from .conftest import FetchedBytes

KEY = "updates/1/u.safetensors"


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "big": rng.standard_normal(2_000_000).astype(np.float32),  # 8 MB
        "small": rng.standard_normal((16, 8)).astype(np.float32),
        "bias": np.arange(7, dtype=np.int64),
    }


def safetensors(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_a_tensor_is_read_by_its_own_range_not_with_the_object(store):
    model = weights()
    data = to_bytes(model)
    store.put(KEY, io.BytesIO(data))
    fetched = FetchedBytes(store.client)
    with store.open_weights(KEY) as reader:
        assert list(reader.tensors) == ["big", "small", "bias"]
        assert len(fetched.requests) == 1  # the header: one small GET
        np.testing.assert_array_equal(reader.read("small"), model["small"])
        np.testing.assert_array_equal(reader.read("bias"), model["bias"])
    assert fetched.requests[0] == HEADER_PREFETCH
    assert fetched.requests[1:] == [model["small"].nbytes, model["bias"].nbytes]
    assert fetched.total < HEADER_PREFETCH + 1024 < len(data) / 100


def test_blocks_of_a_large_tensor_come_from_a_few_large_gets_each_byte_once(store):
    model = weights()
    data = to_bytes(model)
    store.put(KEY, io.BytesIO(data))
    fetched = FetchedBytes(store.client)
    block = np.empty(1 << 18, np.float32)
    with store.open_weights(KEY) as reader:
        for start in range(0, 2_000_000, 1 << 18):
            stop = min(start + (1 << 18), 2_000_000)
            values = reader.read_block("big", start, stop, block)
            assert values.base is block or values is block  # into the caller's buffer
            np.testing.assert_array_equal(values, model["big"][start:stop])
    header_bytes = len(data) - sum(array.nbytes for array in model.values())
    # the header, the first block by itself, then the rest fetched ahead in chunks of up to 8 MiB
    assert fetched.requests[0] == HEADER_PREFETCH
    assert block.nbytes in fetched.requests[1:]  # its GET and the first chunk's run at once
    assert 2 < len(fetched.requests) < 2_000_000 * 4 // block.nbytes
    assert max(fetched.requests) <= DEFAULT_CHUNK
    # big's bytes, and at most the tensors stored after it: no byte twice
    assert (
        HEADER_PREFETCH + model["big"].nbytes <= fetched.total <= HEADER_PREFETCH + len(data) - header_bytes
    )


def test_without_read_ahead_each_block_is_its_own_get(make_store):
    store = make_store(read_ahead_bytes=0)
    model = weights()
    store.put(KEY, io.BytesIO(to_bytes(model)))
    fetched = FetchedBytes(store.client)
    block = np.empty(1 << 18, np.float32)
    with store.open_weights(KEY) as reader:
        for start in range(0, 2_000_000, 1 << 18):
            stop = min(start + (1 << 18), 2_000_000)
            np.testing.assert_array_equal(
                reader.read_block("big", start, stop, block), model["big"][start:stop]
            )
    assert max(fetched.requests[1:]) == block.nbytes
    assert fetched.total == HEADER_PREFETCH + model["big"].nbytes


def test_a_header_longer_than_the_first_get_is_read_whole(store):
    model = {f"layer_{i:04d}.weight": np.full(3, i, np.float32) for i in range(2000)}
    data = to_bytes(model)
    assert struct.unpack("<Q", data[:8])[0] > HEADER_PREFETCH
    store.put(KEY, io.BytesIO(data))
    fetched = FetchedBytes(store.client)
    with store.open_weights(KEY) as reader:
        assert list(reader.tensors) == list(model)
        np.testing.assert_array_equal(reader.read("layer_1999.weight"), model["layer_1999.weight"])
    assert len(fetched.requests) == 3  # the prefix, the rest of the header, the tensor


def test_small_objects_come_whole_with_the_first_get(store):
    model = {"w": np.ones((4, 4), np.float32)}
    store.put(KEY, io.BytesIO(to_bytes(model)))
    fetched = FetchedBytes(store.client)
    with store.open_weights(KEY) as reader:
        np.testing.assert_array_equal(reader.read("w"), model["w"])
    assert len(fetched.requests) == 2


def test_a_lying_header_is_refused_before_any_tensor_is_read(store):
    header = {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}
    store.put(KEY, io.BytesIO(safetensors(header, b"\0" * 40)))
    with pytest.raises(InvalidWeights, match="truncated"):
        store.open_weights(KEY)
    header = {"w": {"dtype": "F32", "shape": [10], "data_offsets": [0, 80]}}
    store.put(KEY, io.BytesIO(safetensors(header, b"\0" * 80)))
    with pytest.raises(InvalidWeights, match="data range of 80 bytes"):
        store.open_weights(KEY)


def test_a_truncated_object_is_refused(store):
    data = to_bytes(weights())
    store.put(KEY, io.BytesIO(data[:-1000]))
    with pytest.raises(InvalidWeights, match="truncated"):
        store.open_weights(KEY)


def test_empty_and_oversized_objects_are_refused(store):
    store.put(KEY, io.BytesIO(b""))
    with pytest.raises(InvalidWeights, match="0 bytes"):
        store.open_weights(KEY)
    data = to_bytes(weights())
    store.put(KEY, io.BytesIO(data))
    with pytest.raises(InvalidWeights, match="above the limit"):
        store.open_weights(KEY, max_bytes=len(data) - 1)


def test_an_object_replaced_while_it_is_read_fails_instead_of_mixing_versions(store):
    store.put(KEY, io.BytesIO(to_bytes(weights())))
    with store.open_weights(KEY) as reader:
        store.put(KEY, io.BytesIO(to_bytes({**weights(), "big": np.zeros(2_000_000, np.float32)})))
        with pytest.raises(InvalidWeights, match="changed or was removed"):
            reader.read("big")


def test_weights_load_through_open_too(store):
    model = weights()
    store.put(KEY, io.BytesIO(to_bytes(model)))
    with store.open(KEY) as stream:
        loaded = load(stream)
    for name, array in model.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_an_endpoint_that_ignores_ranges_is_refused_instead_of_downloaded(store):
    data = to_bytes(weights())
    store.put(KEY, io.BytesIO(data))

    def drop_range(request, **kwargs) -> None:  # what a server without Range support sees
        del request.headers["Range"]

    store.client.meta.events.register("before-sign.s3.GetObject", drop_range)
    with pytest.raises(OSError, match="whole object"):
        store.open_weights(KEY)
    with store.open(KEY) as stream:
        stream.seek(1000)
        with pytest.raises(OSError, match="answered with"):
            stream.read(10)


class BreakingBody:
    """A response body whose connection breaks once ``after`` bytes have come through."""

    def __init__(self, body, after: int) -> None:
        self._body = body
        self._left = after

    def readinto(self, buffer) -> int:
        if not self._left:
            raise ResponseStreamingError(error="connection reset by peer")
        got = self._body.readinto(memoryview(buffer)[: self._left])
        self._left -= got
        return got

    def close(self) -> None:
        self._body.close()


def break_bodies(s3_client, count: int, after: int) -> None:
    """Break the next ``count`` GET bodies after ``after`` bytes each."""
    remaining = [count]

    def breaking(parsed, **kwargs) -> None:
        if remaining[0]:
            remaining[0] -= 1
            parsed["Body"] = BreakingBody(parsed["Body"], after)

    s3_client.meta.events.register("after-call.s3.GetObject", breaking)


def test_a_block_whose_connection_breaks_is_resumed_where_it_broke(make_store):
    store = make_store(read_ahead_bytes=0)  # the block's own GET, no chunk fetched beside it
    model = weights()
    store.put(KEY, io.BytesIO(to_bytes(model)))
    with store.open_weights(KEY) as reader:
        fetched = FetchedBytes(store.client)
        break_bodies(store.client, count=READ_ATTEMPTS - 1, after=100_000)
        np.testing.assert_array_equal(reader.read_block("big", 0, 1 << 18), model["big"][: 1 << 18])
    assert fetched.requests == [1 << 20, (1 << 20) - 100_000, (1 << 20) - 200_000]


def test_a_block_that_keeps_breaking_fails_after_the_last_attempt(make_store):
    store = make_store(read_ahead_bytes=0)
    store.put(KEY, io.BytesIO(to_bytes(weights())))
    with store.open_weights(KEY) as reader:
        break_bodies(store.client, count=READ_ATTEMPTS, after=100_000)
        with pytest.raises(StoreUnavailable) as failed:  # the store's failure, never the update's
            reader.read_block("big", 0, 1 << 18)
    assert isinstance(failed.value.__cause__, ResponseStreamingError)
