"""The client's safetensors encoding and its model adapters, checked against the safetensors package and fma-core."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from fma_client.weights import SafetensorsBody, as_weights, encode, read_file, to_list, write_file
from fma_core.weights import load
from fma_core.weights.format import MAX_HEADER_BYTES

MIXED = {
    "z.kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
    "a.bias": np.array([1, -2, 3], dtype=np.int64),
    "m.scale": np.float64(2.5) * np.ones((2, 1, 2)),
    "scalar": np.array(7, dtype=np.uint8),
    "empty": np.zeros((0, 3), dtype=np.float16),
}


def test_encoding_is_read_identically_by_safetensors_and_by_the_server_in_the_given_order():
    data = encode(MIXED)
    by_package = safetensors.numpy.load(data)
    by_server = load(data)
    assert list(by_server) == list(MIXED)  # order kept although safetensors sorts names
    for name, array in MIXED.items():
        for decoded in (by_package[name], by_server[name]):
            assert decoded.dtype == array.dtype
            np.testing.assert_array_equal(decoded, array)


def test_non_contiguous_and_big_endian_arrays_are_sent_as_little_endian_values():
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    big = np.arange(4, dtype=">i4")
    decoded = load(encode({"t": transposed, "big": big}))
    np.testing.assert_array_equal(decoded["t"], transposed)
    np.testing.assert_array_equal(decoded["big"], big)
    assert decoded["big"].dtype == np.dtype("<i4")


def test_a_body_reads_in_pieces_reports_its_length_and_rewinds_for_a_retry():
    body = SafetensorsBody(MIXED)
    whole = encode(MIXED)
    assert len(body) == len(whole)
    pieces = []
    while chunk := body.read(7):
        pieces.append(chunk)
    assert b"".join(pieces) == whole
    assert len(body) == 0
    body.seek(0)
    assert (len(body), body.read()) == (len(whole), whole)
    with pytest.raises(OSError, match="seeks to a position"):
        body.seek(len(whole) + 1)


@pytest.mark.parametrize("start", [0, 5, 8, 100, 101, 131])
def test_a_body_reads_from_any_position_and_copies_share_the_arrays(start):
    body = SafetensorsBody(MIXED)
    whole = encode(MIXED)
    copy = body.copy()
    body.seek(start)
    assert (body.tell(), len(body)) == (start, len(whole) - start)
    assert body.read(37) == whole[start : start + 37]
    assert copy.read() == whole  # a copy reads on its own
    assert copy.size == body.size == len(whole)


def test_dtypes_the_server_cannot_aggregate_are_refused_before_sending():
    with pytest.raises(TypeError, match="bool"):
        SafetensorsBody({"mask": np.ones(3, dtype=bool)})


def test_files_round_trip_in_order(tmp_path):
    write_file(MIXED, tmp_path / "m.safetensors")
    assert list(read_file(tmp_path / "m.safetensors")) == list(MIXED)


def test_files_without_an_order_entry_are_read_in_the_file_order(tmp_path):
    safetensors.numpy.save_file({"b": np.ones(2, np.float32), "a": np.zeros(1, np.float32)}, tmp_path / "x")
    assert sorted(read_file(tmp_path / "x")) == ["a", "b"]


def test_a_keras_list_takes_the_pulled_names_or_positions():
    layers = [np.ones((2, 2), np.float32), [0.5, 0.5]]
    assert list(as_weights(layers)) == ["0", "1"]
    named = as_weights(layers, names=["dense/kernel", "dense/bias"])
    assert list(named) == ["dense/kernel", "dense/bias"]
    np.testing.assert_array_equal(named["dense/bias"], [0.5, 0.5])
    assert list(as_weights(layers, names=["only-one"])) == ["0", "1"]  # names of another model are ignored
    assert [a.shape for a in to_list(named)] == [(2, 2), (2,)]


def test_a_state_dict_of_tensors_is_detached_moved_to_the_cpu_and_converted():
    calls = []

    class Tensor:  # the part of torch.Tensor the adapter uses
        def __init__(self, array):
            self.array = array

        def detach(self):
            calls.append("detach")
            return self

        def cpu(self):
            calls.append("cpu")
            return self

        def numpy(self):
            calls.append("numpy")
            return self.array

    weights = as_weights({"fc.weight": Tensor(np.eye(2, dtype=np.float32)), "fc.bias": np.zeros(2)})
    assert list(weights) == ["fc.weight", "fc.bias"]
    np.testing.assert_array_equal(weights["fc.weight"], np.eye(2))
    assert calls == ["detach", "cpu", "numpy"]


def test_other_objects_are_refused_with_what_to_pass_instead():
    with pytest.raises(TypeError, match="state_dict"):
        as_weights("model.pt")


def test_the_clients_header_for_a_large_model_is_far_below_the_servers_limit():
    """A Llama-3-70B-sized tensor table (723 tensors) takes a small fraction of the server's limit."""
    names = [f"model.layers.{layer}.{part}.weight" for layer in range(80) for part in LAYER_PARTS]
    names += ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    body = SafetensorsBody({name: np.zeros((0, 8192), np.float16) for name in names})
    header_len = int.from_bytes(body.read(8), "little")
    assert len(names) == 723
    assert header_len < MAX_HEADER_BYTES / 50
    body.seek(0)
    assert list(load(body.read())) == names


LAYER_PARTS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
]


def test_reading_a_model_file_costs_the_arrays_not_also_a_map_of_the_file(tmp_path):
    """A pulled model's memory is its arrays: reading through a memory map of the whole file
    (safetensors' get_tensor) also counted the mapped pages, twice the model."""
    path = tmp_path / "model.safetensors"
    write_file({f"t{n}": np.full(8_000_000, n, np.float32) for n in range(4)}, path)  # 128 MB
    code = (
        "import sys\n"
        "from fma_client.weights import read_file\n"
        "def status(key):\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key))\n"
        "before = status('VmRSS:')\n"
        "weights = read_file(sys.argv[1])\n"
        "assert [float(a[-1]) for a in weights.values()] == [0.0, 1.0, 2.0, 3.0]\n"
        "print(status('VmHWM:') - before)\n"
    )
    grown = int(
        subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert grown < 1.3 * path.stat().st_size
