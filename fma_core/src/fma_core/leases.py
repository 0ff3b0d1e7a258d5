"""``LeaseKeeper``: a heartbeat that renews a round's lease while a worker computes it.

A lease must outlive the slowest round, or another worker takes the round over and computes it
again; but a long lease keeps a dead worker's round blocked just as long. Renewing from a daemon
thread, every third of the lease, reconciles the two: an alive worker keeps its round however
long the aggregation takes (slow storage, a huge model), and a killed worker's heartbeat dies with
it, so its lease still expires ``lease_seconds`` after the last renewal.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from fma_core.connectors.metadata import MetadataStore, RoundClaim
from fma_core.errors import LeaseLost

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """``with LeaseKeeper(metadata, claim, lease_seconds=...): work()`` keeps the claim live meanwhile.

    Entering renews once, so work on a round already committed or taken over (a redelivered task)
    stops at once with ``LeaseLost``. If the round is taken over meanwhile anyway (the worker
    stalled longer than a lease, e.g. suspended), leaving the block raises ``LeaseLost``, so the
    work's result is not written for a lost round.
    """

    def __init__(self, metadata: MetadataStore, claim: RoundClaim, *, lease_seconds: float) -> None:
        self.metadata = metadata
        self.claim = claim
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self.lost: LeaseLost | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fma-lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self.metadata.renew_lease(self.claim, lease_seconds=self.lease_seconds)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None and self.lost is not None:
            raise self.lost

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.metadata.renew_lease(self.claim, lease_seconds=self.lease_seconds)
                except LeaseLost as error:
                    self.lost = error
                    return
                except Exception:  # a database hiccup: the next beat tries again, well within the lease
                    logger.exception("renewing the lease of round %s failed", self.claim.round_number)
        finally:
            self.metadata.thread_finished()
