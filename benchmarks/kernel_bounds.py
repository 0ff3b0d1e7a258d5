"""What bounds a weighted sum on this machine: bare kernels over the same bytes, next to the read floor.

N updates × P float32 in memory (default N=20, P=2M; ``--quick``: P=500k), cut into blocks of the
linear aggregators' size (64K elements), each kernel on one thread and on two, the blocks taken
from one queue as the aggregator takes them, interleaved, the best of ``--repeat`` runs:

- ``sum``: ``a.sum()`` of every block, the read floor of ``aggregate.py``;
- ``max``: ``a.max()`` of every block, numpy's fastest plain read;
- ``add``: ``acc += x`` per update (what ``mean`` does);
- ``muladd``: ``term = x·c; acc += term`` per update, numpy's IEEE product then sum (two passes), what
  ``fedavg`` did before it took BLAS's, and still does for float16 tensors;
- ``saxpy_fma``: BLAS ``saxpy`` (``acc += c·x``, SciPy's OpenBLAS, one fused multiply-add per
  element, one pass): what ``fedavg`` and the server optimizers' mean change do for float32
  (``fma_core.aggregators.base.weighted_sum`` through ``fma_core.aggregators.axpy``) without the
  engine around it.

For each: GB/s of update bytes (wall time), and GB per CPU second (all threads' CPU time), which
shows the work a byte costs whatever else runs on the machine.

    python benchmarks/kernel_bounds.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fma_core.aggregators.axpy import fused_axpy, one_blas_thread

BLOCK = 1 << 16
Kernel = Callable[[list[np.ndarray], np.ndarray, int, int, np.ndarray, np.ndarray], None]


def k_sum(xs, c, start, stop, acc, term):
    for x in xs:
        x[start:stop].sum()


def k_max(xs, c, start, stop, acc, term):
    for x in xs:
        x[start:stop].max()


def k_add(xs, c, start, stop, acc, term):
    acc = acc[: stop - start]
    np.copyto(acc, xs[0][start:stop])
    for x in xs[1:]:
        np.add(acc, x[start:stop], acc)


def k_muladd(xs, c, start, stop, acc, term):
    acc, term = acc[: stop - start], term[: stop - start]
    np.multiply(xs[0][start:stop], c[0], acc)
    for x, share in zip(xs[1:], c[1:], strict=True):
        np.multiply(x[start:stop], share, term)
        np.add(acc, term, acc)


def k_saxpy_fma(xs, c, start, stop, acc, term):
    acc = acc[: stop - start]
    saxpy = fused_axpy(acc.dtype)
    np.multiply(xs[0][start:stop], c[0], acc)
    for x, share in zip(xs[1:], c[1:], strict=True):
        saxpy(x[start:stop], acc, a=share)


KERNELS: dict[str, Kernel] = {
    "sum": k_sum,
    "max": k_max,
    "add": k_add,
    "muladd": k_muladd,
    "saxpy_fma": k_saxpy_fma,
}


def over_blocks(kernel: Kernel, xs: list[np.ndarray], c: np.ndarray, threads: int) -> Callable[[], None]:
    size = xs[0].size

    def run() -> None:
        starts = iter(range(0, size, BLOCK))
        taking = threading.Lock()

        def work() -> None:
            acc, term = np.empty(BLOCK, np.float32), np.empty(BLOCK, np.float32)
            while True:
                with taking:
                    start = next(starts, None)
                if start is None:
                    return
                kernel(xs, c, start, min(start + BLOCK, size), acc, term)

        if threads == 1:
            work()
            return
        with ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(work) for _ in range(threads)]:
                future.result()

    return run


def run(count: int, params: int, repeat: int) -> dict[str, float | int]:
    rng = np.random.default_rng(0)
    xs = [rng.random(params, dtype=np.float32) - 0.5 for _ in range(count)]
    c = (rng.random(count) / count).astype(np.float32)
    total = count * params * 4
    runs = {
        f"{name}_t{threads}": over_blocks(kernel, xs, c, threads)
        for name, kernel in KERNELS.items()
        for threads in (1, 2)
    }
    wall = dict.fromkeys(runs, float("inf"))
    cpu = dict.fromkeys(runs, float("inf"))
    with one_blas_thread():  # the kernels' threads are ours, as the aggregator's are
        for _ in range(repeat):
            for name, kernel_run in runs.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                kernel_run()
                wall[name] = min(wall[name], time.perf_counter() - started)
                cpu[name] = min(cpu[name], time.process_time() - cpu_started)
    figures: dict[str, float | int] = {"updates": count, "params": params}
    for name in runs:
        figures[f"{name}_gbps"] = _significant(total / wall[name] / 1e9)
        figures[f"{name}_cpu_gbps"] = _significant(total / cpu[name] / 1e9)
        figures[f"{name}_ratio_vs_sum_t2"] = _significant(wall["sum_t2"] / wall[name])
        figures[f"{name}_cpu_ratio_vs_sum"] = _significant(cpu["sum_t1"] / cpu[name])
    return figures


def _significant(value: float) -> float:
    return float(f"{value:.4g}")


def table(figures: dict[str, float | int]) -> str:
    lines = [
        f"{figures['updates']} updates × {figures['params']:,} float32, blocks of {BLOCK:,} elements",
        "",
        f"{'kernel':<14} {'GB/s':>8} {'vs sum, 2 thr':>14} {'GB/CPU s':>9} {'vs sum':>7}",
    ]
    for name in KERNELS:
        for threads in (1, 2):
            key = f"{name}_t{threads}"
            lines.append(
                f"{key:<14} {figures[f'{key}_gbps']:>8.2f} {figures[f'{key}_ratio_vs_sum_t2']:>13.2f}× "
                f"{figures[f'{key}_cpu_gbps']:>9.2f} {figures[f'{key}_cpu_ratio_vs_sum']:>6.2f}×"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="P=500k parameters per update")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--updates", type=int, default=20, help="number of updates N")
    parser.add_argument("--params", type=int, help="parameters per update P (default 2M)")
    parser.add_argument("--repeat", type=int, default=15, help="runs per kernel (the best one counts)")
    args = parser.parse_args(argv)
    if args.updates < 2:
        parser.error("--updates must be at least 2")
    params = args.params or (500_000 if args.quick else 2_000_000)
    figures = run(args.updates, params, args.repeat)
    print(json.dumps(figures) if args.json else table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
