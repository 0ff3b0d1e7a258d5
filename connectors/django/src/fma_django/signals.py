"""Signals for the packages that run rounds and checks, so fma_django never imports them.

``round_may_be_ready`` is sent (with ``experiment_id``) after an accepted update has committed:
the configured runner (fma-aggregator) decides whether and where the round runs.
``upload_check_requested`` is sent (with ``upload_id``, the session's UUID as text) after an
upload session too large to check within a request has moved to ``checking``, and again by
every sweep while it stays there: the runner calls ``fma_django.ingestion.upload_check``.
``secure_round_unmask_requested`` is sent (with ``round_id``) after a secure round's last share
committed, and again by every sweep while the round is ``summing``: the runner calls
``fma_django.secure_rounds.secure_round_unmask``.
Receivers' errors are logged, never raised: the state is already committed, and the runners'
periodic sweep catches up on any notification that was lost.
"""

from __future__ import annotations

import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

round_may_be_ready = Signal()
upload_check_requested = Signal()
secure_round_unmask_requested = Signal()


def announce_round_may_be_ready(experiment_id: int) -> None:
    for receiver, result in round_may_be_ready.send_robust(sender=None, experiment_id=experiment_id):
        if isinstance(result, Exception):
            logger.error(
                "notifying %r that experiment %s may be ready failed: %s", receiver, experiment_id, result
            )


def announce_upload_check_requested(upload_id: str) -> None:
    for receiver, result in upload_check_requested.send_robust(sender=None, upload_id=upload_id):
        if isinstance(result, Exception):
            logger.error("handing upload %s's check to %r failed: %s", upload_id, receiver, result)


def announce_secure_round_unmask_requested(round_id: int) -> None:
    for receiver, result in secure_round_unmask_requested.send_robust(sender=None, round_id=round_id):
        if isinstance(result, Exception):
            logger.error("handing secure round %s's unmasking to %r failed: %s", round_id, receiver, result)
