"""Signals for the packages that run rounds, so fma_django never imports them.

``round_may_be_ready`` is sent (with ``experiment_id``) after an accepted update has committed:
the configured runner (fma-aggregator) decides whether and where the round runs. Receivers'
errors are logged, never raised: the update is already stored, and the runners' periodic sweep
catches up on any notification that was lost.
"""

from __future__ import annotations

import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

round_may_be_ready = Signal()


def announce_round_may_be_ready(experiment_id: int) -> None:
    for receiver, result in round_may_be_ready.send_robust(sender=None, experiment_id=experiment_id):
        if isinstance(result, Exception):
            logger.error(
                "notifying %r that experiment %s may be ready failed: %s", receiver, experiment_id, result
            )
