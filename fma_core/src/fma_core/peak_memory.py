"""The peak resident memory of a piece of work, so each aggregate can record what its round cost.

The process's lifetime peak (``ru_maxrss``) says nothing about one round in a long-lived worker,
so a daemon thread samples the current RSS while the work runs; if the lifetime peak rose during
the work, that new peak was reached by the work and is exact, so it wins over the samples.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from types import TracebackType

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int | None:
    """This process's resident set size in bytes, where the platform says (Linux); else None."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def lifetime_peak_rss() -> int:
    """The process's peak RSS since it started, in bytes.

    Linux's ``VmHWM`` first: ``ru_maxrss`` also counts the parent's memory that a forked and
    exec'd process briefly shared, which would charge a small worker for its launcher.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.bytes`` is the highest RSS seen meanwhile."""

    def __init__(self, *, interval: float = 0.02) -> None:
        self.interval = interval
        self.bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lifetime_before = 0

    def __enter__(self) -> PeakMemory:
        self._lifetime_before = lifetime_peak_rss()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="fma-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        lifetime_after = lifetime_peak_rss()
        if lifetime_after > self._lifetime_before:
            self.bytes = max(self.bytes, lifetime_after)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        rss = current_rss()
        if rss is not None:
            self.bytes = max(self.bytes, rss)
