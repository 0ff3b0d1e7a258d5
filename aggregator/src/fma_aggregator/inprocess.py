"""The in-process runner: one background thread per process that runs rounds when told they may be ready,
the checks of uploads too large to check within their complete request, and the sums of secure rounds.

The API notifies it after an accepted update commits; it never runs a round (or a check) inside a request.
Notifications are deduplicated per experiment (a burst of a hundred updates queues the experiment
once), a round whose policy has a deadline sets a timer for it, and a periodic sweep picks up
what no notification covers: expired leases of workers that died, and rounds left pending by a
previous process. Exactly-once comes from the round engine's lease, so any number of processes
(fma-server's workers, a standalone ``fma-aggregator worker``) can each run one of these.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

from fma_core.rounds import RoundOutcome

logger = logging.getLogger(__name__)


class InProcessRunner:
    """``run`` runs one experiment's round; ``sweep`` lists the experiments to look at again;
    ``check`` checks one upload (``check_upload`` queues it), before the rounds its update may make ready;
    ``unmask`` sums one secure round (``unmask`` queues it)."""

    def __init__(
        self,
        *,
        run: Callable[[str], RoundOutcome],
        sweep: Callable[[], list[str]],
        check: Callable[[str], object] | None = None,
        unmask: Callable[[str], object] | None = None,
        sweep_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._run = run
        self._sweep = sweep
        self._check = check
        self._unmask = unmask
        self.sweep_seconds = sweep_seconds
        self._clock = clock
        self._wake = threading.Condition()
        self._queued: dict[str, None] = {}  # an ordered set: each experiment at most once
        self._checks: dict[str, None] = {}  # the same for uploads to check
        self._unmasks: dict[str, None] = {}  # and for secure rounds to sum
        self._timers: list[tuple[float, str]] = []
        self._next_sweep = 0.0  # sweep as soon as the thread starts
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.outcomes: list[RoundOutcome] = []  # the last 100 outcomes, newest last

    def notify(self, experiment_id: str | int) -> None:
        """The experiment may be ready: queue it (once) and make sure the thread runs. Never blocks."""
        with self._wake:
            self._queued[str(experiment_id)] = None
            self._wake.notify()
        self.start()

    def check_upload(self, upload_id: str) -> None:
        """Queue the upload's check (once) and make sure the thread runs. Never blocks."""
        if self._check is None:
            raise ValueError("this runner was made without a check function")
        with self._wake:
            self._checks[upload_id] = None
            self._wake.notify()
        self.start()

    def unmask(self, round_id: str) -> None:
        """Queue the secure round's sum (once) and make sure the thread runs. Never blocks."""
        if self._unmask is None:
            raise ValueError("this runner was made without an unmask function")
        with self._wake:
            self._unmasks[round_id] = None
            self._wake.notify()
        self.start()

    def start(self) -> None:
        """Start the thread if it is not running (also in a process forked from one where it was)."""
        with self._wake:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="fma-inprocess-runner", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Let the current round finish, then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run_forever(self) -> None:
        """Run in the calling thread until ``stop`` (the standalone worker's main loop); what is queued
        meanwhile is run here, not in another thread."""
        with self._wake:
            self._thread = threading.current_thread()
        self._loop()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._due():
                    self._wake.wait(self._seconds_to_next())
                if self._stopping:
                    return
                checks, unmasks, batch, sweep_now = self._take()
            for upload_id in checks:
                self._check_one(upload_id)
            for round_id in unmasks:
                self._unmask_one(round_id)
            if sweep_now:
                try:
                    batch.extend(e for e in self._sweep() if e not in batch)
                except Exception:
                    logger.exception("sweeping for rounds failed; trying again in %s s", self.sweep_seconds)
            for experiment_id in batch:
                self._run_one(experiment_id)

    def _due(self) -> bool:
        now = self._clock()
        return (
            bool(self._queued)
            or bool(self._checks)
            or bool(self._unmasks)
            or now >= self._next_sweep
            or bool(self._timers and self._timers[0][0] <= now)
        )

    def _seconds_to_next(self) -> float:
        times = [self._next_sweep] + ([self._timers[0][0]] if self._timers else [])
        return max(0.0, min(times) - self._clock())

    def _take(self) -> tuple[list[str], list[str], list[str], bool]:
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            self._queued[heapq.heappop(self._timers)[1]] = None
        checks, self._checks = list(self._checks), {}
        unmasks, self._unmasks = list(self._unmasks), {}
        batch, self._queued = list(self._queued), {}
        sweep_now = now >= self._next_sweep
        if sweep_now:
            self._next_sweep = now + self.sweep_seconds
        return checks, unmasks, batch, sweep_now

    def _check_one(self, upload_id: str) -> None:
        try:
            self._check(upload_id)
        except Exception:
            logger.exception("the check of upload %s failed; the sweep will hand it out again", upload_id)

    def _unmask_one(self, round_id: str) -> None:
        try:
            self._unmask(round_id)
        except Exception:
            logger.exception("the sum of secure round %s failed; the sweep will hand it out again", round_id)

    def _run_one(self, experiment_id: str) -> None:
        try:
            outcome = self._run(experiment_id)
        except Exception:
            logger.exception("round of experiment %s failed; the sweep will retry it", experiment_id)
            return
        self.outcomes = [*self.outcomes[-99:], outcome]
        with self._wake:
            if outcome.status == "committed":
                # updates that arrived after the claim may already make the next round
                self._queued[experiment_id] = None
            elif outcome.wakeup_at is not None and (outcome.wakeup_at, experiment_id) not in self._timers:
                heapq.heappush(self._timers, (outcome.wakeup_at, experiment_id))
