"""fma_core.aggregators.axpy: BLAS axpy is one rounding per element, and an element's bits do not
depend on where its slice begins or ends (the kernel's vector body and tail agree), nor on BLAS's
threads: what keeps sharded rounds bit-identical to whole ones."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from fma_core.aggregators.axpy import fused_axpy, one_blas_thread

from .float_reference import fma_float32, fma_float64


def operands(dtype: type, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x and y over many magnitudes, so products and sums round in every way."""
    rng = np.random.default_rng(seed)
    scale = np.exp2(rng.integers(-20, 20, count))
    return (rng.standard_normal(count) * scale).astype(dtype), (rng.standard_normal(count) * scale).astype(
        dtype
    )


def test_the_float32_reference_rounds_once():
    a = np.float32(1 + 2**-23)
    # a·a = 1 + 2⁻²² + 2⁻⁴⁶: a product then a sum loses the 2⁻⁴⁶, one rounding keeps it
    x, y = np.array([a]), np.array([-(1 + 2**-22)], np.float32)
    assert (a * x + y)[0] == 0
    assert fma_float32(a, x, y)[0] == 2**-46
    # a·(1 − 2⁻²³)·2⁻²⁴ = 2⁻²⁴ − 2⁻⁷⁰, added to 1 + 2⁻²³: just below a float32 tie, which float64
    # cannot hold (it rounds to the tie, and the tie to the even 1 + 2⁻²²); one rounding gives 1 + 2⁻²³
    x, y = np.array([(1 - 2**-23) * 2**-24], np.float32), np.array([1 + 2**-23], np.float32)
    assert (a * x + y)[0] == np.float32(1 + 2**-22)
    assert np.float32(np.float64(a) * np.float64(x[0]) + np.float64(y[0])) == np.float32(1 + 2**-22)
    assert fma_float32(a, x, y)[0] == np.float32(1 + 2**-23)


def test_the_float64_reference_rounds_once():
    a = 1 + 2.0**-52  # a·a = 1 + 2⁻⁵¹ + 2⁻¹⁰⁴
    assert a * a - (1 + 2.0**-51) == 0
    assert fma_float64(a, np.array([a]), np.array([-(1 + 2.0**-51)]))[0] == 2.0**-104


@pytest.mark.parametrize(
    ("dtype", "count", "reference"), [(np.float32, 20_000, fma_float32), (np.float64, 2_000, fma_float64)]
)
def test_axpy_rounds_each_element_once(dtype, count, reference):
    x, y = operands(dtype, count)
    a = dtype(0.7310585786)
    with one_blas_thread():
        got = fused_axpy(np.dtype(dtype))(x, y.copy(), a=a)
    want = reference(a, x, y)
    assert got.tobytes() == want.astype(dtype).tobytes()
    assert (got != y + x * a).any()  # which a product then a sum would not give


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_elements_bits_do_not_depend_on_where_its_slice_begins_or_ends(dtype):
    axpy = fused_axpy(np.dtype(dtype))
    x, y = operands(dtype, 70_200, seed=1)
    a = dtype(-0.2689414213699951)
    with one_blas_thread():
        whole = axpy(x, y.copy(), a=a)
    lengths = [*range(1, 70), 127, 129, 1000, 1001, 4095, 4097, (1 << 16) - 3, 70_001]
    with one_blas_thread():
        for start in range(64):
            for length in lengths:
                part = slice(start, start + length)
                # the sum in place in a view at any offset (a target's range of the result) ...
                in_place = y[: part.stop + 1].copy()
                axpy(x[part], in_place[part], a=a)
                assert same_bits(in_place[part], whole[part]), (start, length)
                assert same_bits(in_place[: part.start], y[: part.start])
                assert in_place[part.stop] == y[part.stop]
                # ... or in a buffer of its own (a thread's accumulator) against a view of the values
                assert same_bits(axpy(x[part], y[part].copy(), a=a), whole[part]), (start, length)
    # BLAS's own threads (above 10,000 elements, when not kept to one) split the range anew
    assert same_bits(axpy(x[3:], y[3:].copy(), a=a), whole[3:])


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.int64, np.uint8])
def test_other_dtypes_keep_numpys_product_then_sum(dtype):
    assert fused_axpy(np.dtype(dtype)) is None


def test_blas_runs_on_its_callers_thread_within_and_as_before_after():
    def blas_threads() -> dict[str, int]:
        return {
            pool["filepath"]: pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"
        }

    before = blas_threads()
    with one_blas_thread():
        within = blas_threads()
        fused_axpy(np.dtype(np.float32))  # SciPy's BLAS was loaded before the limit: no new library
        assert blas_threads() == within
    assert within
    assert set(within.values()) == {1}
    after = blas_threads()
    assert after.keys() == within.keys()
    assert {path: after[path] for path in before} == before  # as it was
