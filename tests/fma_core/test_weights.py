"""fma_core.weights: the safetensors format, streaming reads, validate() and the legacy JSON form."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct

import numpy as np
import pytest

from fma_core.errors import InvalidWeights
from fma_core.weights import (
    ArrayReader,
    TensorSpec,
    content_id,
    from_legacy_json,
    load,
    open_weights,
    to_bytes,
    to_legacy_json,
    validate,
    write_file,
)
from fma_core.weights.format import MAX_HEADER_BYTES
from fma_core.weights.scan import scan


@pytest.fixture
def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
        "bn.running_var": rng.random(4),  # float64
        "bn.num_batches_tracked": np.array(12, dtype=np.int64),
        "head.weight": rng.standard_normal((10, 4)).astype(np.float16),
    }


def raw_file(header: dict, data: bytes, *, length: int | None = None) -> bytes:
    """A safetensors file written by hand, to build the broken ones a hostile client could send."""
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + data


def test_round_trip_keeps_order_values_and_dtypes(weights):
    loaded = load(to_bytes(weights))
    assert list(loaded) == list(weights)
    for name, array in weights.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)


def test_files_written_by_other_tools_are_read_in_data_order():
    import safetensors.numpy

    data = safetensors.numpy.save({"b": np.zeros(2, np.float32), "a": np.ones(3, np.float32)})
    with open_weights(data) as reader:
        assert sorted(reader.tensors) == ["a", "b"]
        np.testing.assert_array_equal(reader.read("a"), np.ones(3, np.float32))


@pytest.mark.parametrize("kind", ["path", "bytes", "seekable stream", "non-seekable stream"])
def test_every_kind_of_source_reads_block_by_block(weights, tmp_path, kind):
    path = tmp_path / "w.safetensors"
    write_file(weights, path)
    data = path.read_bytes()

    class OneWay(io.RawIOBase):  # a socket-like stream: no seek, no fileno
        def __init__(self) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            return self._inner.readinto(buffer)

    source = {
        "path": path,
        "bytes": data,
        "seekable stream": io.BytesIO(data),
        "non-seekable stream": OneWay(),
    }[kind]
    with open_weights(source) as reader:
        assert list(reader.tensors) == list(weights)
        flat = weights["conv.weight"].reshape(-1)
        np.testing.assert_array_equal(reader.read_block("conv.weight", 5, 50), flat[5:50])
        buffer = np.empty(100, np.float32)
        np.testing.assert_array_equal(reader.read_block("conv.weight", 0, 7, buffer), flat[:7])
        np.testing.assert_array_equal(
            reader.read("bn.num_batches_tracked"), weights["bn.num_batches_tracked"]
        )


def test_content_id_is_the_sha256_of_the_bytes(weights, tmp_path):
    data = to_bytes(weights)
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert content_id(data) == content_id(path) == content_id(io.BytesIO(data)) == expected


def test_validate_accepts_matching_weights_and_returns_their_spec(weights):
    spec = TensorSpec.from_weights(weights)
    assert validate(to_bytes(weights), spec) == spec
    assert TensorSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


@pytest.mark.parametrize(
    ("change", "message", "tensor"),
    [
        (lambda w: w.pop("conv.bias"), "missing tensors: 'conv.bias'", "conv.bias"),
        (lambda w: w.update(extra=np.zeros(1, np.float32)), "unexpected tensors: 'extra'", "extra"),
        (
            lambda w: w.update({"conv.bias": np.zeros(5, np.float32)}),
            "shape (5,) does not match the expected (4,)",
            "conv.bias",
        ),
        (
            lambda w: w.update({"conv.bias": np.zeros(4, np.float64)}),
            "dtype F64 does not match the expected F32",
            "conv.bias",
        ),
        (lambda w: w["conv.weight"].__setitem__((0, 0, 0, 0), np.nan), "NaN or infinite", "conv.weight"),
        (lambda w: w["head.weight"].__setitem__((9, 3), np.inf), "NaN or infinite", "head.weight"),
        (lambda w: w["bn.running_var"].__setitem__(0, -np.inf), "NaN or infinite", "bn.running_var"),
    ],
)
def test_validate_names_the_tensor_and_the_problem(weights, change, message, tensor):
    spec = TensorSpec.from_weights(weights)
    change(weights)
    with pytest.raises(InvalidWeights, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        validate(to_bytes(weights), spec)
    assert error.value.tensor == tensor
    assert repr(tensor) in str(error.value)


def test_huge_but_finite_float64_values_are_not_mistaken_for_overflow():
    validate(to_bytes({"x": np.full(8, 1e308)}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "fewer than the 8-byte header length"),
        (struct.pack("<Q", 1 << 40), "above the limit of 16,777,216 bytes"),
        (struct.pack("<Q", 500) + b"{}", "header claims 500 bytes but only 2 follow"),
        (raw_file({}, b"")[:8] + b"not json", "not valid JSON"),
        (raw_file([1, 2], b""), "not a JSON object"),
        (
            raw_file({"t": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\0\0"),
            "BOOL is not a numeric type",
        ),
        (
            raw_file({"t": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"\0\0"),
            "BF16 is not a numeric type",
        ),
        (
            raw_file({"t": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}}, bytes(8)),
            "not a list of non-negative",
        ),
        (
            raw_file({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)),
            "data range of 8 bytes",
        ),
        (
            raw_file({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
            "truncated: the header describes 16 bytes",
        ),
        (
            raw_file({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12)),
            "4 bytes after the last tensor",
        ),
        (
            raw_file(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                bytes(12),
            ),
            "overlaps the previous tensor",
        ),
        (raw_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "leaves a gap"),
        (b'\x1e\x00\x00\x00\x00\x00\x00\x00{"a": {}, "a": {}}            ', "names tensor 'a' twice"),
        (raw_file({"__metadata__": {"fma.order": '["zz"]'}}, b""), "does not list exactly"),
    ],
)
def test_malformed_files_are_refused_with_a_reason(data, message):
    with pytest.raises(InvalidWeights, match=message):
        validate(data)


def test_files_above_the_size_limit_are_refused_before_reading(weights, tmp_path):
    data = to_bytes(weights)
    with pytest.raises(InvalidWeights, match=f"{len(data):,} bytes, above the limit of 100 bytes"):
        validate(data, max_bytes=100)


def test_a_file_truncated_after_its_header_was_checked_fails_on_read(weights, tmp_path):
    path = tmp_path / "w.safetensors"
    write_file(weights, path)
    with open_weights(path) as reader:
        with open(path, "r+b") as file:
            file.truncate(100)
        with pytest.raises(InvalidWeights, match="truncated"):
            reader.read("conv.weight")


def test_legacy_json_round_trip_uses_the_spec_names_and_dtypes(weights):
    spec = TensorSpec.from_weights(weights)
    data = json.loads(json.dumps(to_legacy_json(weights)))
    restored = from_legacy_json(data, spec)
    assert list(restored) == list(weights)
    for name, array in weights.items():
        assert restored[name].dtype == array.dtype
        np.testing.assert_array_equal(restored[name], array)


def test_legacy_json_without_spec_names_layers_by_position():
    restored = from_legacy_json([[[1, 2], [3, 4]], [0.5, 1.5], 7])
    assert list(restored) == ["0", "1", "2"]
    assert restored["0"].dtype == np.float32
    assert restored["0"].shape == (2, 2)
    assert restored["2"].shape == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"layer": [1]}, "must be a list of layers"),
        ([[1, 2], [[1, 2], [3]]], "layer 1 is not a rectangular array"),
        ([["a", "b"]], "layer 0 is not a rectangular array"),
        ([[1.0], [2.0], [3.0]], "has 3 layers, the experiment expects 2"),
    ],
)
def test_legacy_json_errors_say_what_is_wrong(data, message):
    spec = TensorSpec.from_json(
        [{"name": "w", "dtype": "F32", "shape": [1]}, {"name": "b", "dtype": "F32", "shape": [1]}]
    )
    with pytest.raises(InvalidWeights, match=message):
        from_legacy_json(data, spec if "layers, the" in message else None)


def test_legacy_json_is_checked_against_the_spec_like_any_update():
    spec = TensorSpec.from_json([{"name": "w", "dtype": "F32", "shape": [2]}])
    with pytest.raises(InvalidWeights, match=r"shape \(3,\) does not match"):
        validate(ArrayReader(from_legacy_json([[1, 2, 3]], spec)), spec)


@pytest.mark.parametrize(
    "entry",
    [
        "not a list",
        [{"dtype": "F32", "shape": [1]}],
        [{"name": "a", "dtype": "BOOL", "shape": [1]}],
        [{"name": "a", "dtype": "F32", "shape": [True]}],
        [{"name": "a", "dtype": "F32", "shape": [1]}, {"name": "a", "dtype": "F32", "shape": [1]}],
    ],
)
def test_malformed_specs_are_refused(entry):
    with pytest.raises(InvalidWeights):
        TensorSpec.from_json(entry)


def test_the_header_limit_is_a_few_mib_and_holds_a_large_models_tensor_table():
    """The bound is what a 50,000-tensor model needs (~200 bytes a tensor with its name in the order
    list), several times the tensor count of the largest dense language models (Llama 3 70B: 723)."""
    assert MAX_HEADER_BYTES <= 16 * 2**20
    names = [f"model.layers.{i // 100}.mlp.experts.{i % 100}.down_proj.weight" for i in range(50_000)]
    data = to_bytes({name: np.zeros(0, np.float32) for name in names})
    (header_len,) = struct.unpack("<Q", data[:8])
    assert header_len < MAX_HEADER_BYTES
    assert list(load(data)) == names


@pytest.mark.parametrize("kind", ["bytes", "path", "scan"])
def test_a_header_above_the_limit_is_refused_before_it_is_parsed(weights, tmp_path, kind):
    data = to_bytes(weights, metadata={"padding": "x" * (17 * 2**20)})
    path = tmp_path / "big-header.safetensors"
    path.write_bytes(data)
    message = r"header .* above the limit of 16,777,216 bytes"
    if kind == "scan":
        scanned = scan(io.BytesIO(data), size=len(data))
        assert scanned.problem is not None
        assert re.search(message, str(scanned.problem))
        assert scanned.sha256 == hashlib.sha256(data).hexdigest()
    else:
        with pytest.raises(InvalidWeights, match=message), open_weights(data if kind == "bytes" else path):
            pass


def test_a_header_within_the_limit_is_read(weights):
    data = to_bytes(weights, metadata={"padding": "x" * (MAX_HEADER_BYTES - 4096)})
    assert list(load(data)) == list(weights)
