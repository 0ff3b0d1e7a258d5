"""The chores of the periodic sweep: stale upload sessions, uploads waiting for their check, expired
update bytes, bytes no record references, secure rounds whose stage deadline has passed, and secure
rounds waiting for their sum.

Every runner (in-process, Celery beat, the Lambda schedule, ``fma-aggregator run-once``) calls
``housekeeping_sweep`` next to its round sweep, so each deployment shape cleans up without a
scheduler of its own.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from functools import partial

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from fma_core.errors import ConfigurationError
from fma_core.orphans import remove_unreferenced
from fma_django import selectors
from fma_django.models import EventKind, UploadSession, UploadState
from fma_django.secure_rounds import secure_rounds_advance, secure_rounds_unmask_again
from fma_django.services import event_record, update_weights_prune
from fma_django.signals import announce_upload_check_requested
from fma_django.storage import weight_store
from fma_django.telemetry import sweep_observed

logger = logging.getLogger(__name__)

_ORPHANS_SWEPT = "fma:orphans-swept"


def housekeeping_sweep(*, lease_seconds: float, now: datetime | None = None) -> dict[str, int]:
    """Expire stale uploads, hand uploads left ``checking`` to the runner again, prune old update
    bytes and remove old bytes no record references; what was done, by chore. ``lease_seconds``
    is the runner's ``FMA_LEASE_SECONDS`` (see ``orphan_grace_seconds``).

    A failing chore is logged and left to the next sweep, so it never stops rounds from running.
    """
    started = time.monotonic()
    now = now or datetime.now(UTC)
    done = {}
    for name, chore in (
        ("uploads_expired", partial(uploads_expire_stale, now=now)),
        ("uploads_checking", uploads_check_again),
        ("update_weights_removed", partial(update_weights_prune, now=now)),
        ("orphans_removed", partial(weights_remove_unreferenced, lease_seconds=lease_seconds, now=now)),
        ("secure_rounds_advanced", partial(secure_rounds_advance, now=now.timestamp())),
        ("secure_rounds_summing", secure_rounds_unmask_again),
    ):
        try:
            done[name] = chore()
        except Exception:
            logger.exception("the sweep's %s chore failed; the next sweep tries again", name)
            done[name] = 0
    sweep_observed(seconds=time.monotonic() - started, done=done)
    return done


def uploads_expire_stale(*, now: datetime | None = None) -> int:
    """Abort the sessions still open ``FMA_UPLOAD_TIMEOUT_SECONDS`` after they started; returns how many.

    Run by every runner's periodic sweep. A session that fails to abort (the store is
    unreachable) is logged and tried again at the next sweep.
    """
    now = now or timezone.now()
    timeout = int(settings.FMA_UPLOAD_TIMEOUT_SECONDS)
    stale = UploadSession.objects.filter(
        state=UploadState.OPEN, created_on__lte=now - timedelta(seconds=timeout)
    ).values_list("pk", flat=True)
    expired = 0
    for pk in list(stale):
        try:
            with transaction.atomic():
                session = (
                    UploadSession.objects.select_for_update().filter(pk=pk, state=UploadState.OPEN).first()
                )
                if session is None:  # completed or aborted meanwhile
                    continue
                weight_store().abort_upload(session.weights_key, session.store_upload_id)
                session.state = UploadState.EXPIRED
                session.reason = f"not completed within {timeout:,} s"
                session.save(update_fields=["state", "reason", "updated_on"])
                event_record(
                    kind=EventKind.UPLOAD_EXPIRED,
                    experiment=session.experiment,
                    client=session.client,
                    upload=str(session.uuid),
                )
        except Exception:
            logger.exception("expiring upload session %s failed; the next sweep tries again", pk)
            continue
        expired += 1
    return expired


def uploads_checking() -> list[str]:
    """The ids of the sessions waiting for (or in) their check, oldest first."""
    waiting = UploadSession.objects.filter(state=UploadState.CHECKING).order_by("updated_on", "id")
    return [str(upload_id) for upload_id in waiting.values_list("uuid", flat=True)]


def uploads_check_again() -> int:
    """Announce every session left ``checking`` again (``upload_check_requested``); returns how many.

    Run by every runner's periodic sweep: a notification lost, or a worker killed mid-check
    (whose transaction rolled back), must not leave an upload waiting forever. A session still
    being checked is announced too; ``ingestion.upload_check`` skips it while its row is locked.
    """
    waiting = uploads_checking()
    for upload_id in waiting:
        announce_upload_check_requested(upload_id)
    return len(waiting)


def orphan_grace_seconds(*, lease_seconds: float) -> float:
    """How old bytes no record references must be before the sweep removes them: the longer of the
    round lease and an upload session's lifetime (``FMA_UPLOAD_TIMEOUT_SECONDS``).

    Every object is written before (or while) the record naming it: a claimed round's aggregate
    and shard records while its lease is renewed, an upload's parts while its session is open,
    a one-request update's bytes within its request (far shorter than an upload session may
    last). Younger bytes may still get their record, so they are never removed. Never zero: the
    lease is always positive.
    """
    grace = max(float(lease_seconds), float(settings.FMA_UPLOAD_TIMEOUT_SECONDS))
    if grace <= 0:
        raise ConfigurationError(f"the sweep's grace period must be positive, not {grace} s")
    return grace


def weights_remove_unreferenced(*, lease_seconds: float, now: datetime | None = None) -> int:
    """Remove from the weight store what no record references and was last written more than the
    grace period (``orphan_grace_seconds``) before ``now``: objects and unfinished uploads under
    FMA's key spaces, and the store's own leftovers (the local store's temporary files). Returns
    how many; logs how many and how many bytes.

    Listing a store costs requests (S3: one LIST per 1,000 objects), so this runs at most once per
    ``FMA_ORPHAN_SWEEP_SECONDS`` (default 3600; 0: every sweep) in each process, or in the whole
    deployment when its processes share a cache.
    """
    now = now or datetime.now(UTC)
    interval = int(getattr(settings, "FMA_ORPHAN_SWEEP_SECONDS", 3600))
    if interval > 0 and not cache.add(_ORPHANS_SWEPT, now.timestamp(), timeout=interval):
        return 0
    try:
        grace = orphan_grace_seconds(lease_seconds=lease_seconds)
        claimed = selectors.weight_keys_claimed(now=now.timestamp(), grace_seconds=grace)
        swept = remove_unreferenced(
            weight_store(),
            referenced=lambda keys: selectors.weight_keys_referenced(keys=keys, claimed=claimed),
            before=now.timestamp() - grace,
        )
    except BaseException:
        cache.delete(_ORPHANS_SWEPT)  # a failed sweep is tried again at the next one, not an interval later
        raise
    if swept.count:
        logger.info(
            "the sweep removed what no record references and was older than %s s: %s objects (%s bytes), "
            "%s unfinished uploads (%s bytes), %s leftovers of interrupted writes (%s bytes)",
            f"{grace:,.0f}",
            swept.objects.count,
            f"{swept.objects.bytes:,}",
            swept.uploads.count,
            f"{swept.uploads.bytes:,}",
            swept.leftovers.count,
            f"{swept.leftovers.bytes:,}",
        )
    return swept.count
