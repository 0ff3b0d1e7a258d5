"""An upload's check, run by whichever runner was handed it (``fma_django.ingestion.upload_check``), and
a secure round's sum (``run_unmask``), handed out the same way.

The API hands a check to the runner when an upload is too large to check within its complete
request (``FMA_UPLOAD_INLINE_CHECK_BYTES``); the sweep hands out again every upload still
``checking``. The check locks its session, so running it twice or at once is harmless.
"""

from __future__ import annotations

import logging
from typing import Any

from fma_django.ingestion import upload_check
from fma_django.secure_rounds import secure_round_unmask

logger = logging.getLogger(__name__)


def run_check(upload_id: str) -> dict[str, Any]:
    """Check the upload now, in this process; what was done, as JSON (``skipped``: nothing to do)."""
    session = upload_check(upload_id)
    if session is None:
        return {"status": "skipped", "upload_id": upload_id}
    logger.info("upload %s checked: %s %s", upload_id, session.state, session.reason)
    return {
        "status": session.state,
        "upload_id": upload_id,
        "update_id": session.update_id,
        "reason": session.reason,
    }


def run_unmask(round_id: int | str) -> dict[str, Any]:
    """Sum and unmask a secure round whose shares are in, now, in this process
    (``fma_django.secure_rounds.secure_round_unmask``); what was done, as JSON."""
    row = secure_round_unmask(int(round_id))
    if row is None:
        return {"status": "skipped", "round_id": int(round_id)}
    logger.info("secure round %s: %s %s", row.pk, row.stage, row.reason)
    return {"status": row.stage, "round_id": row.pk, "aggregate_id": row.aggregate_id, "reason": row.reason}
