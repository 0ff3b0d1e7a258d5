"""An upload's check, run by whichever runner was handed it (``fma_django.ingestion.upload_check``).

The API hands a check to the runner when an upload is too large to check within its complete
request (``FMA_UPLOAD_INLINE_CHECK_BYTES``); the sweep hands out again every upload still
``checking``. The check locks its session, so running it twice or at once is harmless.
"""

from __future__ import annotations

import logging
from typing import Any

from fma_django.ingestion import upload_check

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
