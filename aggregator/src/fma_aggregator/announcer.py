"""Announcements to the Celery broker, sent from one background thread per process, so that no request
waits on the broker.

An accepted update is already committed when its round is announced, so the push must neither wait
on a broker that is down or hangs, nor fail because of it. ``Announcer.announce`` queues the message
(once per task and argument: a burst of a hundred updates to one experiment is one message) and
returns; the thread sends it (``fma_aggregator.celery.publish``: bounded timeouts, one reconnection,
no result backend). A message that cannot be sent is logged and dropped: every runner's periodic
sweep finds each round that is due and each upload still waiting for its check.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Announcer:
    """Sends ``send(task, argument)`` calls in its own thread, in order, each queued message at most once."""

    def __init__(self, send: Callable[[str, str], None]) -> None:
        self._send = send
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked process starts its own thread

    def _reset(self) -> None:
        self._wake = threading.Condition()
        self._queued: dict[tuple[str, str], None] = {}  # an ordered set
        self._thread: threading.Thread | None = None
        self._failing = False

    def announce(self, task: str, argument: str) -> None:
        """Queue the message and make sure the thread runs. Never blocks on the broker."""
        with self._wake:
            self._queued[(task, argument)] = None
            self._wake.notify()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="fma-announcer", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._queued:
                    self._wake.wait()
                (task, argument), *_ = self._queued
                del self._queued[(task, argument)]
            self._deliver(task, argument)

    def _deliver(self, task: str, argument: str) -> None:
        try:
            self._send(task, argument)
        except Exception as error:
            # One line per outage at warning level, then quieter: a long outage must not flood the log.
            log = logger.debug if self._failing else logger.warning
            log("could not send %s(%s) to the broker (%s); the sweep will find it", task, argument, error)
            self._failing = True
        else:
            if self._failing:
                logger.info("the broker takes announcements again")
            self._failing = False
