"""Signals for the packages that run rounds and checks, so fma_django never imports them.

``round_may_be_ready`` is sent (with ``experiment_id``) after an accepted update has committed:
the configured runner (fma-aggregator) decides whether and where the round runs.
``upload_check_requested`` is sent (with ``upload_id``, the session's UUID as text) after an
upload session too large to check within a request has moved to ``checking``, and again by
every sweep while it stays there: the runner calls ``fma_django.ingestion.upload_check``.
``evaluation_reported`` is sent (with ``experiment_id``, ``aggregate_id`` and ``evaluation_id``) after
a new evaluation of an aggregate has committed (never for a retry): what acts on a metric reaching a
target reads ``selectors.evaluation_latest`` then.
Receivers' errors are logged, never raised: the state is already committed, and the runners'
periodic sweep catches up on any notification that was lost.
"""

from __future__ import annotations

import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

round_may_be_ready = Signal()
upload_check_requested = Signal()
evaluation_reported = Signal()


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


def announce_evaluation_reported(*, experiment_id: int, aggregate_id: int, evaluation_id: int) -> None:
    for receiver, result in evaluation_reported.send_robust(
        sender=None, experiment_id=experiment_id, aggregate_id=aggregate_id, evaluation_id=evaluation_id
    ):
        if isinstance(result, Exception):
            logger.error("telling %r of evaluation %s failed: %s", receiver, evaluation_id, result)
