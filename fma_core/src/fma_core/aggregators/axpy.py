"""The fused multiply-add of a weighted sum: ``acc ← acc + s·x`` in one pass, by BLAS axpy.

numpy has no fused multiply-add, so ``acc + s·x`` in numpy is two passes over the block (the product
into a buffer, then the sum); BLAS ``saxpy``/``daxpy`` (SciPy's OpenBLAS) reads ``x`` and ``acc``
once, writes ``acc`` once, and rounds each element once: ``fma(s, x, acc)``. An element's result
depends on its three values alone, not on where its block, its shard or a thread's share begins
(the kernel's vector body and its tail give the same bits: ``tests/fma_core/test_axpy.py`` checks
every offset and length against the whole array), so a sharded round stays bit-identical to the
unsharded one, whatever the threads. OpenBLAS picks its kernel for the CPU it runs on (on this
project's machines, Intel Xeon with AVX-512: its SkylakeX kernel, which fuses in the vector body and
the tail alike), and a CPU without a fused multiply-add rounds the product first: bit-identity is
per machine type, as for the privacy noise (``docs/privacy.md``).

OpenBLAS runs one axpy on several threads of its own above 10,000 elements; the aggregation's
threads are already one per core, so ``one_blas_thread`` keeps each call on its caller's thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import numpy as np
from threadpoolctl import threadpool_limits

Axpy = Callable[..., np.ndarray]  # axpy(x, y, n, a): y[:n] ← y[:n] + a·x[:n] in place, y returned


@functools.cache
def load_blas() -> ModuleType:
    """SciPy's BLAS, imported on first use: SciPy takes 0.2 s or more to import, which a process that
    never aggregates (the API's) does not pay. A round engine loads it when it is built, so that no
    round pays it."""
    from scipy.linalg import blas

    return blas


def fused_axpy(dtype: np.dtype) -> Axpy | None:
    """BLAS axpy for values and accumulator of ``dtype`` (float32: ``saxpy``, float64: ``daxpy``); None
    for any other dtype, which keeps numpy's product then sum."""
    if dtype == np.float32:
        return load_blas().saxpy
    if dtype == np.float64:
        return load_blas().daxpy
    return None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on its caller's thread only, for the duration (process-wide, as BLAS's own setting is)."""
    load_blas()  # loaded first, so that the limit reaches SciPy's OpenBLAS too
    with threadpool_limits(limits=1, user_api="blas"):
        yield
