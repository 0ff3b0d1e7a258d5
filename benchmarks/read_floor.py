"""The read floor the aggregation benchmarks measure against: one pass over the same bytes, nothing more.

A weighted mean must read every update once; a plain read of those bytes (``a.sum()`` of every
block, numpy's own fast reduction) is what it cannot beat. Measured on one thread and on as many
threads as the aggregator uses, the blocks taken from one queue as the aggregator takes them:

- ``memory_read``: the arrays in memory, a view of each block summed;
- ``file_read``: safetensors files (in the page cache after they were written): each block read
  with ``os.preadv`` into the thread's buffer, as the aggregator's file reader does, then summed.

``aggregate.py`` and ``round.py`` time these in the same run as what they compare to them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BLOCK_ELEMENTS = 1 << 16  # float32 elements per block: 256 KiB, as the linear aggregators' blocks


def memory_read(arrays: Sequence[np.ndarray], threads: int) -> Callable[[], None]:
    """One pass of ``a.sum()`` over every block of ``arrays`` (1-D or not), on ``threads`` threads."""
    flat = [np.asarray(array).reshape(-1) for array in arrays]

    def blocks() -> Iterator[Callable[[np.ndarray | None], None]]:
        for array in flat:
            for start in range(0, array.size, BLOCK_ELEMENTS):
                yield lambda _, block=array[start : start + BLOCK_ELEMENTS]: block.sum()

    return lambda: _run(blocks(), threads, None)


def file_read(paths: Sequence[Path], data_bytes: int, threads: int) -> Callable[[], None]:
    """One pass over the last ``data_bytes`` of each file (a safetensors file's tensors, float32):
    ``os.preadv`` of each block into the thread's buffer, then ``a.sum()`` of it, on ``threads`` threads."""
    step = BLOCK_ELEMENTS * 4

    def read() -> None:
        files = [open(path, "rb") for path in paths]  # noqa: SIM115 - closed below
        try:

            def blocks() -> Iterator[Callable[[np.ndarray], None]]:
                for file in files:
                    fd = file.fileno()
                    start = os.fstat(fd).st_size - data_bytes
                    for offset in range(start, start + data_bytes, step):
                        count = min(step, start + data_bytes - offset)
                        yield lambda buffer, fd=fd, offset=offset, count=count: _pread_sum(
                            fd, offset, buffer[: count // 4]
                        )

            _run(blocks(), threads, BLOCK_ELEMENTS)
        finally:
            for file in files:
                file.close()

    return read


def _pread_sum(fd: int, offset: int, buffer: np.ndarray) -> None:
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError("file ended while being read")
        done += got
    buffer.sum()


def _run(blocks: Iterator[Callable[[np.ndarray | None], None]], threads: int, buffer: int | None) -> None:
    taking = threading.Lock()

    def work() -> None:
        scratch = np.empty(buffer, np.float32) if buffer else None
        while True:
            with taking:
                block = next(blocks, None)
            if block is None:
                return
            block(scratch)

    if threads == 1:
        work()
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="read-floor") as pool:
        for future in [pool.submit(work) for _ in range(threads)]:
            future.result()
