"""Read-ahead for objects read block by block: large ranged GETs fetched ahead of the reader.

A round reads every update in small blocks (a few hundred KiB of one tensor, one update after
another), and a ranged GET costs the server and botocore about as much per request as per byte:
one GET per block is many times slower than the same bytes in a few large GETs. From an object's
first block read on, its ``Prefetcher`` fetches the bytes after the reads in chunks of up to
``DEFAULT_CHUNK`` on the store's ``ReadAhead`` pool, and serves the reads from those chunks, so
the reader adds a block while the GETs of the next ones are on the wire. Every reader FMA has
(rounds, upload checks) reads forward; a read far from the last one starts the window over.

Bounds, whatever the number or size of the objects open:

- memory: the chunks held by all of a store's objects, fetched or in flight, never exceed the
  store's budget (``read_ahead_bytes``); each open object gets an equal share of it (chunks shrink
  to fit, down to ``MIN_CHUNK``), and a read the budget cannot cover is one GET of its own range
  into the caller's buffer, as without read-ahead;
- GETs in flight: the pool's ``concurrency`` threads (plus each reading thread's own GETs);
- bytes: a chunk never runs past the object's end; bytes fetched and never read are at most one
  share per object whose reads stop or jump.

A chunk is dropped once all its bytes were read, once reads have moved a chunk past it, when
the object's reads jump elsewhere, and when the object is closed; closing cancels the GETs not
started and waits for those running, so a closed object leaves nothing in flight.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

from fma_s3.reading import ObjectVersion

DEFAULT_CHUNK = 8 * 1024**2
"""The largest GET of the read-ahead: a few of SeaweedFS's 4 MiB chunks, where S3's cost per
request is small against the bytes (AWS's own advice for ranged reads is 8–16 MB)."""
MIN_CHUNK = 1024**2
"""The smallest GET of the read-ahead, when many objects share the budget."""
DEFAULT_BUDGET = 128 * 1024**2
"""Bytes the read-ahead of one store holds at most, over all its open objects."""
DEFAULT_CONCURRENCY = 8
"""GETs the read-ahead keeps in flight at most, over all of a store's open objects."""


class ReadAhead:
    """A store's read-ahead: a pool of ``concurrency`` GET threads and a budget of ``budget`` bytes,
    shared by every object the store has open for block reads."""

    def __init__(self, *, budget: int = DEFAULT_BUDGET, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.budget = budget
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._reserved = 0
        self._open = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0

    @property
    def reserved(self) -> int:
        """Bytes held or being fetched now, by every open object together."""
        return self._reserved

    def prefetcher(self, version: ObjectVersion) -> Prefetcher:
        """Read-ahead for one object, until its ``close``."""
        with self._lock:
            self._open += 1
        return Prefetcher(version, self)

    def share(self) -> int:
        """Each open object's part of the budget."""
        return self.budget // max(1, self._open)

    def chunk(self) -> int:
        """The GET size that lets each open object hold two chunks: one read, the next fetched."""
        return max(MIN_CHUNK, min(DEFAULT_CHUNK, self.share() // 2))

    def reserve(self, count: int) -> bool:
        with self._lock:
            if self._reserved + count > self.budget:
                return False
            self._reserved += count
            return True

    def release(self, count: int) -> None:
        with self._lock:
            self._reserved -= count

    def submit(self, fetch: Callable[[], mmap.mmap]) -> Future[mmap.mmap]:
        with self._lock:
            # a forked process (a prefork worker) inherits the pool but not its threads: it starts its own
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="fma-s3-read")
                self._pool_pid = os.getpid()
            return self._pool.submit(fetch)

    def object_closed(self) -> None:
        """One object's ``Prefetcher`` is closed: the budget is shared by one object fewer."""
        with self._lock:
            self._open -= 1


class _Chunk:
    """Bytes [start, stop) of the object: being fetched, or fetched and not yet all read. Its budget
    comes back once it is both dropped and no longer being fetched (``Prefetcher._drop``)."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.unread = stop - start
        self.future: Future[mmap.mmap] | None = None
        self.fetching = True  # submitted, and the GET not over
        self.dropped = False

    @property
    def size(self) -> int:
        return self.stop - self.start


class Prefetcher:
    """One object's read-ahead (see the module): ``read_into`` serves reads from the chunks fetched
    ahead, and GETs the rest of a read itself."""

    def __init__(self, version: ObjectVersion, read_ahead: ReadAhead) -> None:
        self._version = version
        self._ahead = read_ahead
        self._lock = threading.Lock()
        self._chunks: list[_Chunk] = []  # the window: consecutive chunks, in the object's order
        self._fetching: list[_Chunk] = []  # every chunk whose GET is not over, in the window or not
        self._held = 0  # bytes of the window's chunks
        self._next: int | None = None  # where the next chunk starts
        self._last_end: int | None = None  # the furthest end of the reads since the last jump
        self._closed = False

    def read_into(self, first: int, view: memoryview) -> None:
        """Fill ``view`` with the object's bytes from ``first``: from the chunks fetched ahead where
        they cover it, by a GET of the rest otherwise. A failed GET of a chunk raises here, in
        the reader that needs its bytes."""
        end = first + len(view)
        with self._lock:
            if self._closed:
                raise ValueError("read from a closed S3 object")
            self._follow(first, end)
            covering = [chunk for chunk in self._chunks if chunk.start < end and first < chunk.stop]
            if len(view) < self._ahead.chunk():  # large reads are efficient GETs already
                self._top_up()
        position = first
        for chunk in covering:
            if position < chunk.start:
                self._version.read_into(position, view[position - first : chunk.start - first])
                position = chunk.start
            stop = min(end, chunk.stop)
            if not self._copy(chunk, position, view[position - first : stop - first]):
                self._version.read_into(position, view[position - first : stop - first])
            position = stop
        if position < end:
            self._version.read_into(position, view[position - first :])

    def close(self) -> None:
        """Cancel the GETs not started and wait for the running ones: once closed, the object has
        no GET in flight and holds none of the budget."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drop(list(self._chunks))
            running = [chunk.future for chunk in self._fetching if chunk.future is not None]
        for future in running:
            future.exception()  # waits for the GET; its error, if any, is nobody's now
        self._ahead.object_closed()

    def _follow(self, first: int, end: int) -> None:
        """Keep the window on the reads: the first read, or one near the last one's end, runs
        forward (the chunks from its end on are fetched); any other starts over there. Chunks a
        whole chunk behind the read are dropped (two threads read interleaved blocks, so a little
        behind is normal)."""
        slack = self._ahead.chunk()
        if self._last_end is not None and abs(first - self._last_end) > slack:  # a jump
            self._drop(list(self._chunks))
            self._next = self._last_end = None
        self._last_end = end if self._last_end is None else max(self._last_end, end)
        if self._next is None or self._next < end:  # the reads overtook the chunks fetched
            self._next = end
        self._drop([chunk for chunk in self._chunks if chunk.stop <= first - slack])

    def _top_up(self) -> None:
        """Fetch the next chunk after the window if this object's share and the store's budget
        allow: one per read, so that objects read in turn queue their first chunks before
        anyone's second, and the pool serves them in the order the reader needs them."""
        if self._next is None or self._next >= self._version.size:
            return
        size, share = self._ahead.chunk(), self._ahead.share()
        chunk = _Chunk(self._next, min(self._next + size, self._version.size))
        if self._held + chunk.size > max(share, size) or not self._ahead.reserve(chunk.size):
            return
        self._held += chunk.size
        self._chunks.append(chunk)
        self._fetching.append(chunk)
        chunk.future = self._ahead.submit(lambda: self._fetch(chunk))
        self._next = chunk.stop

    def _fetch(self, chunk: _Chunk) -> mmap.mmap:
        """The chunk's GET, on the pool; the chunk's budget comes back here if it was dropped meanwhile.

        The bytes go into an anonymous mapping of their own, returned to the system as soon as
        the chunk is no longer referenced: allocated with malloc, chunks freed on one thread and
        allocated on another would leave the process's heaps larger than the budget."""
        try:
            data = mmap.mmap(-1, chunk.size)
            self._version.read_into(chunk.start, memoryview(data))
            return data
        finally:
            with self._lock:
                self._fetching.remove(chunk)
                chunk.fetching = False
                if chunk.dropped:
                    self._ahead.release(chunk.size)

    def _copy(self, chunk: _Chunk, position: int, into: memoryview) -> bool:
        """Copy the chunk's bytes from ``position`` into ``into``; False if the chunk was dropped
        before its GET started (the caller then GETs them itself)."""
        assert chunk.future is not None
        try:
            data = chunk.future.result()
        except CancelledError:
            return False
        into[:] = memoryview(data)[position - chunk.start : position - chunk.start + len(into)]
        with self._lock:
            chunk.unread -= len(into)
            if chunk.unread <= 0 and not chunk.dropped:
                self._drop([chunk])
        return True

    def _drop(self, chunks: list[_Chunk]) -> None:
        """Take ``chunks`` out of the window (under the lock). A GET not started is cancelled; the
        budget comes back now if no GET runs for the chunk, else when it ends (``_fetch``), so bytes
        in flight stay counted."""
        for chunk in chunks:
            self._chunks.remove(chunk)
            self._held -= chunk.size
            chunk.dropped = True
            if chunk.future is not None and chunk.future.cancel():
                self._fetching.remove(chunk)
                chunk.fetching = False
            if not chunk.fetching:
                self._ahead.release(chunk.size)
