"""The chores of the periodic sweep: stale upload sessions, uploads waiting for their check, and
expired update bytes.

Every runner (in-process, Celery beat, the Lambda schedule) calls ``housekeeping_sweep`` next to
its round sweep, so each deployment shape cleans up without a scheduler of its own.
"""

from __future__ import annotations

import logging

from fma_django.services import update_weights_prune
from fma_django.uploads import uploads_check_again, uploads_expire_stale

logger = logging.getLogger(__name__)


def housekeeping_sweep() -> dict[str, int]:
    """Expire stale uploads, hand uploads left ``checking`` to the runner again and prune old
    update bytes; what was done, by chore.

    A failing chore is logged and left to the next sweep, so it never stops rounds from running.
    """
    done = {}
    for name, chore in (
        ("uploads_expired", uploads_expire_stale),
        ("uploads_checking", uploads_check_again),
        ("update_weights_removed", update_weights_prune),
    ):
        try:
            done[name] = chore()
        except Exception:
            logger.exception("the sweep's %s chore failed; the next sweep tries again", name)
            done[name] = 0
    return done
