"""Upload sessions: an update's bytes sent in parts, in parallel and resumably, then completed.

The same protocol serves every weight store. ``upload_start`` checks the update's metadata
(as ``update_submit`` does) and opens a multipart upload in the store; the client sends each
part to its target (a presigned store URL when the store gives one, else the API's part
endpoint, ``upload_part_put``); ``upload_complete`` joins the parts, compares the store's own
size and SHA-256 with the declared ones and hands the object to ``services.update_accept``,
the one function that turns stored bytes into an accepted update. Above
``FMA_UPLOAD_INLINE_CHECK_BYTES`` that check leaves the request: the session waits in
``checking`` until a runner calls ``upload_check``, the same code. A rejected upload leaves
no bytes behind; sessions left open are aborted by ``uploads_expire_stale`` from the sweep,
and sessions left ``checking`` are handed out again by ``uploads_check_again``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from fma_core.connectors import StoredObject, UploadedPart
from fma_core.errors import InvalidWeights, ObjectNotFound
from fma_core.weights.scan import Scanned
from fma_django import services
from fma_django.errors import Conflict, DomainError, TooLarge, ValidationFailed
from fma_django.models import (
    Client,
    EventKind,
    Experiment,
    ModelUpdate,
    UpdateKind,
    UploadSession,
    UploadState,
)
from fma_django.signals import announce_upload_check_requested
from fma_django.storage import max_update_bytes, weight_store

logger = logging.getLogger(__name__)

MAX_PARTS = 10_000  # S3's limit, the strictest store's: larger uploads get larger parts
PART_URL_SECONDS = 3600


def upload_part_bytes(size: int) -> int:
    """The part size for an upload of ``size`` bytes: ``FMA_UPLOAD_PART_BYTES``, grown to fit MAX_PARTS."""
    configured = int(settings.FMA_UPLOAD_PART_BYTES)
    return max(configured, -(-size // MAX_PARTS))


def upload_start(
    *,
    experiment: Experiment,
    client: Client,
    size: int,
    sha256: str,
    num_examples: int = 1,
    base_aggregate_id: int | None = None,
    metrics: Any = None,
    idempotency_key: str | None = None,
    update_kind: str = UpdateKind.WEIGHTS,
) -> tuple[UploadSession, bool]:
    """Open an upload of ``size`` bytes hashing to ``sha256``; returns ``(session, created)``.

    The metadata is checked now, so a client learns before sending any byte that its update
    would be refused (413 above the size limit). A retry with the same idempotency key
    returns the first session.
    """
    services.check_enrolled(experiment, client)
    services.check_idempotency_key(idempotency_key)
    sha256 = sha256.lower()
    if idempotency_key:
        first = UploadSession.objects.filter(client=client, idempotency_key=idempotency_key).first()
        if first is not None:
            return _same_upload(first, experiment, size, sha256), False
        update = ModelUpdate.objects.filter(client=client, idempotency_key=idempotency_key).first()
        if update is not None:
            raise Conflict(
                f"this idempotency key was used for update {update.pk}, sent in one request; "
                "use a new key for a new update"
            )
    base_round, base, _ = services.update_check_metadata(
        experiment=experiment,
        client=client,
        num_examples=num_examples,
        base_aggregate_id=base_aggregate_id,
        metrics=metrics,
        size=size,
        update_kind=update_kind,
    )
    store = weight_store()
    key = services.update_key(experiment)
    session = UploadSession(
        experiment=experiment,
        client=client,
        weights_key=key,
        size_bytes=size,
        sha256=sha256,
        part_bytes=upload_part_bytes(size),
        num_examples=num_examples,
        base_aggregate=base,
        base_round=base_round,
        metrics=metrics,
        idempotency_key=idempotency_key or None,
    )
    session.store_upload_id = upload_id = store.start_upload(key, session.part_sizes())
    try:
        with transaction.atomic():
            session.save()
    except IntegrityError:
        # A concurrent start with the same idempotency key won: answer with its session.
        store.abort_upload(key, upload_id)
        first = UploadSession.objects.filter(client=client, idempotency_key=idempotency_key).first()
        if first is None:
            raise
        return _same_upload(first, experiment, size, sha256), False
    except BaseException:
        store.abort_upload(key, upload_id)
        raise
    return session, True


def _same_upload(session: UploadSession, experiment: Experiment, size: int, sha256: str) -> UploadSession:
    """The first session of an idempotency key, if the retry describes the same bytes."""
    if session.experiment_id != experiment.pk:
        raise Conflict("this idempotency key was used for an upload to another experiment")
    if (session.size_bytes, session.sha256) != (size, sha256):
        raise Conflict(
            "this idempotency key was used for an upload of other bytes (another size or SHA-256); "
            "use a new key for a new update"
        )
    return session


def upload_expires_at(session: UploadSession) -> datetime:
    """When ``uploads_expire_stale`` aborts the session if it is still open."""
    return session.created_on + timedelta(seconds=int(settings.FMA_UPLOAD_TIMEOUT_SECONDS))


def upload_targets(session: UploadSession, *, api_part_url: Callable[[int], str]) -> list[dict[str, Any]]:
    """Where to send each part: the store's presigned URL (with its expiry) or the API's endpoint."""
    store = weight_store()
    expires_at = timezone.now() + timedelta(seconds=PART_URL_SECONDS)
    targets = []
    for number in range(1, session.part_count + 1):
        offset, size = session.part_range(number)
        url = store.presigned_part_url(
            session.weights_key, session.store_upload_id, number, expires_in=PART_URL_SECONDS
        )
        target: dict[str, Any] = {"number": number, "offset": offset, "size": size, "method": "PUT"}
        if url:
            target.update(url=url, headers={}, expires_at=expires_at)
        else:
            target.update(url=api_part_url(number), headers={"Content-Type": "application/octet-stream"})
        targets.append(target)
    return targets


def upload_parts_received(session: UploadSession) -> list[UploadedPart]:
    """The parts the store holds for an open session (none once it has ended).

    A session whose parts a complete request joined before it died (``_joined``) has every part:
    they are listed (without ETags of their own) so that a resuming client sends none and completes.
    """
    if session.state != UploadState.OPEN:
        return []
    try:
        return weight_store().uploaded_parts(session.weights_key, session.store_upload_id)
    except ObjectNotFound:
        if not _joined(session):
            return []
    return [UploadedPart(n, session.part_range(n)[1], "") for n in range(1, session.part_count + 1)]


def upload_part_put(*, session: UploadSession, number: int, stream: Any, length: int) -> UploadedPart:
    """Store part ``number`` from ``stream`` (``length`` bytes, from Content-Length), replacing any earlier one.

    A part must be exactly its size in the session's layout: larger is refused before a byte
    is stored (413), smaller or cut short is refused (400), so the client sends it again.
    """
    _require_open(session)
    if not 1 <= number <= session.part_count:
        raise ValidationFailed(
            f"part {number} is out of range: this upload has parts 1 to {session.part_count}",
            code="invalid_part",
        )
    _, size = session.part_range(number)
    if length > size:
        raise TooLarge(f"part {number} is {length:,} bytes; it must be {size:,} bytes")
    if length < size:
        raise ValidationFailed(
            f"part {number} is {length:,} bytes; it must be {size:,} bytes", code="part_size"
        )
    try:
        part = weight_store().put_part(
            session.weights_key, session.store_upload_id, number, stream, max_bytes=size
        )
    except InvalidWeights as error:
        raise TooLarge(f"part {number}: {error}") from None
    except ObjectNotFound:
        if _joined(session):
            raise Conflict(
                "this upload's parts are already joined (its completion was interrupted): "
                "send no more parts, complete it",
                code="upload_joined",
            ) from None
        raise Conflict("the weight store no longer has this upload; start a new one") from None
    if part.size != size:
        raise ValidationFailed(
            f"part {number} arrived with {part.size:,} of its {size:,} bytes; send it again", code="part_size"
        )
    return part


class Completion(NamedTuple):
    """What completing an upload did: its update and whether it was created now, or no update yet
    (``update`` None) while a runner checks it (``session.state`` is ``checking``)."""

    session: UploadSession
    update: ModelUpdate | None
    created: bool = False


def upload_inline_check_bytes() -> int | None:
    """``FMA_UPLOAD_INLINE_CHECK_BYTES``: the largest upload checked within its complete request (None: any)."""
    limit = getattr(settings, "FMA_UPLOAD_INLINE_CHECK_BYTES", None)
    return None if limit is None else int(limit)


def upload_complete(*, session: UploadSession) -> Completion:
    """Complete an upload: join its parts and accept the update now, or hand the check to a runner.

    Missing or mis-sized parts leave the session open (400 ``incomplete_upload``: send them,
    then complete again). An upload above ``FMA_UPLOAD_INLINE_CHECK_BYTES`` moves to ``checking``
    and, once that commits, is announced (``upload_check_requested``) so a runner calls
    ``upload_check``: reading a multi-GB object does not fit a request behind API Gateway.
    Otherwise the check runs here (``_check``): any refusal removes the object, marks the session
    rejected, records why, and is raised once that has committed. The session row stays locked
    until the outcome is committed, so concurrent completes wait for the first and then return
    its update; completing again does too (and answers "still checking" while a runner checks).
    """
    with transaction.atomic():
        # No joins in the locking query: on PostgreSQL a query that waited for the lock sees the
        # row as committed, but joined rows as they were before, i.e. without the update.
        session = UploadSession.objects.select_for_update().get(pk=session.pk)
        if session.state == UploadState.COMPLETED and session.update is not None:
            return Completion(session, session.update)
        if session.state == UploadState.CHECKING:
            return Completion(session, None)
        _require_open(session)
        services.check_enrolled(session.experiment, session.client)
        try:
            checked = _hand_to_runner(session) if _checked_later(session) else _check(session)
        except _Incomplete as error:
            raise ValidationFailed(str(error), code="incomplete_upload") from None
    if checked.refusal is not None:
        raise checked.refusal
    return Completion(session, checked.update, checked.created)


def upload_check(upload_id: str | uuid.UUID) -> UploadSession | None:
    """Check an upload left ``checking`` by ``upload_complete``: the session with its outcome
    (``completed`` with its update, or ``rejected`` with the reason), or None if there was
    nothing to do.

    Safe to run twice or at once: the session row is locked for the whole check, skipping a row
    another runner holds where the database can (PostgreSQL), and a session no longer
    ``checking`` is left alone. The outcome commits with the session, so a worker killed
    mid-check leaves it ``checking`` for the sweep (``uploads_check_again``) to hand out again.
    """
    skip_locked = connection.features.has_select_for_update_skip_locked
    with transaction.atomic():
        session = (
            UploadSession.objects.select_for_update(skip_locked=skip_locked)
            .filter(uuid=upload_id, state=UploadState.CHECKING)
            .first()
        )
        if session is None:
            return None
        try:
            _check(session)
        except _Incomplete:  # upload_complete saw every part; the store lost some since
            detail = "the weight store lost parts of this upload after it was completed; start a new upload"
            _refuse(session, _reject(session, detail, code="incomplete_upload"))
    return session


class _Checked(NamedTuple):
    update: ModelUpdate | None
    created: bool = False
    refusal: DomainError | None = None


def _checked_later(session: UploadSession) -> bool:
    limit = upload_inline_check_bytes()
    return limit is not None and session.size_bytes > limit


def _hand_to_runner(session: UploadSession) -> _Checked:
    """Move the locked session to ``checking`` and announce it once that commits. Its parts are
    listed first, so a client that missed some learns it now (``_Incomplete``), when it can still send them."""
    try:
        _parts_received(session)
    except DomainError as error:
        _refuse(session, error)
        return _Checked(None, refusal=error)
    session.state = UploadState.CHECKING
    session.save(update_fields=["state", "updated_on"])
    transaction.on_commit(partial(announce_upload_check_requested, str(session.uuid)))
    return _Checked(None)


def _check(session: UploadSession) -> _Checked:
    """Join the parts, read the object once, and accept the update or refuse it; the outcome is
    saved on the locked session, in the caller's transaction. Raises ``_Incomplete``."""
    experiment = session.experiment
    try:
        _join(session)
        scanned = services.update_scan(
            experiment=experiment,
            key=session.weights_key,
            size=session.size_bytes,
            limit=max_update_bytes(experiment.max_update_bytes),
        )
        _check_scanned(session, scanned)
        update, created = services.update_accept(
            experiment=experiment,
            client=session.client,
            stored=StoredObject(key=session.weights_key, size=scanned.size, sha256=scanned.sha256),
            base_aggregate=session.base_aggregate,
            base_round=session.base_round,
            num_examples=session.num_examples,
            metrics=session.metrics,
            idempotency_key=session.idempotency_key,
        )
    except DomainError as error:  # update_accept removed the object and recorded why
        _refuse(session, error)
        return _Checked(None, refusal=error)
    session.state, session.update = UploadState.COMPLETED, update
    session.save(update_fields=["state", "update", "updated_on"])
    return _Checked(update, created)


def _refuse(session: UploadSession, error: DomainError) -> None:
    session.state, session.reason, session.reason_code = UploadState.REJECTED, error.detail, error.code
    session.save(update_fields=["state", "reason", "reason_code", "updated_on"])


class _Incomplete(Exception):
    """Parts are missing or mis-sized: the client can still send them."""


def _parts_received(session: UploadSession) -> list[UploadedPart] | None:
    """Every part, in order, as the store holds it; None if an earlier complete died after joining them."""
    store = weight_store()
    try:
        received = {
            part.number: part for part in store.uploaded_parts(session.weights_key, session.store_upload_id)
        }
    except ObjectNotFound:
        if _joined(session):
            return None
        raise _reject(
            session, "the weight store no longer has this upload's parts; start a new upload"
        ) from None
    missing = [n for n in range(1, session.part_count + 1) if n not in received]
    wrong = [
        f"part {n} has {received[n].size:,} bytes, not {session.part_range(n)[1]:,}"
        for n in range(1, session.part_count + 1)
        if n in received and received[n].size != session.part_range(n)[1]
    ]
    if missing or wrong:
        problems = ([f"parts missing: {', '.join(map(str, missing))}"] if missing else []) + wrong
        raise _Incomplete(
            f"the upload is incomplete ({'; '.join(problems)}): send those parts again, then complete"
        )
    return [received[n] for n in range(1, session.part_count + 1)]


def _joined(session: UploadSession) -> bool:
    """Asked once the store no longer has the open session's multipart upload: whether its parts were
    joined into the object, i.e. a complete request died between the join and the commit of its
    outcome. Completing again checks and records that object."""
    return weight_store().exists(session.weights_key)


def _join(session: UploadSession) -> None:
    """Join the store's parts into the object (nothing to do if an earlier complete died after joining)."""
    parts = _parts_received(session)
    if parts is None:
        return
    store = weight_store()
    try:
        store.complete_upload(session.weights_key, session.store_upload_id, parts)
    except InvalidWeights as error:
        store.abort_upload(session.weights_key, session.store_upload_id)
        raise _reject(session, f"the weight store could not join the parts: {error}") from None


def _check_scanned(session: UploadSession, scanned: Scanned) -> None:
    """The joined bytes, as measured here, must be what the client said it would send, and
    weights the experiment takes; else they are removed. The hash is checked before the
    contents: corrupted parts are a transfer problem, not the client's tensors."""
    if scanned.size != session.size_bytes:
        weight_store().delete(session.weights_key)
        raise _reject(
            session,
            f"the parts add up to {scanned.size:,} bytes; the upload declared {session.size_bytes:,}",
            code="size_mismatch",
        )
    if scanned.sha256 != session.sha256:
        weight_store().delete(session.weights_key)
        raise _reject(
            session,
            f"the joined parts have SHA-256 {scanned.sha256}, not the declared {session.sha256}: "
            "a part was corrupted or the declared hash is wrong",
            code="hash_mismatch",
        )
    if scanned.problem is not None:
        weight_store().delete(session.weights_key)
        raise services.update_rejected(session.experiment, session.client, scanned.problem)


def _reject(session: UploadSession, detail: str, *, code: str = "invalid") -> ValidationFailed:
    services.event_record(
        kind=EventKind.UPDATE_REJECTED,
        experiment=session.experiment,
        client=session.client,
        upload=str(session.uuid),
        reason=detail,
    )
    return ValidationFailed(detail, code=code)


def upload_abort(*, session: UploadSession) -> UploadSession:
    """Drop an open upload and its parts; aborting again is harmless, aborting a finished one is not."""
    with transaction.atomic():
        session = UploadSession.objects.select_for_update().get(pk=session.pk)
        if session.state == UploadState.ABORTED:
            return session
        _require_open(session)
        weight_store().abort_upload(session.weights_key, session.store_upload_id)
        session.state = UploadState.ABORTED
        session.save(update_fields=["state", "updated_on"])
        services.event_record(
            kind=EventKind.UPLOAD_ABORTED,
            experiment=session.experiment,
            client=session.client,
            upload=str(session.uuid),
        )
    return session


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
                services.event_record(
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
    being checked is announced too; ``upload_check`` skips it while its row is locked.
    """
    waiting = uploads_checking()
    for upload_id in waiting:
        announce_upload_check_requested(upload_id)
    return len(waiting)


def _require_open(session: UploadSession) -> None:
    if session.state == UploadState.CHECKING:
        raise Conflict(
            "this upload is complete and being checked; ask for it (GET) until it is completed or rejected",
            code="upload_checking",
        )
    if session.state != UploadState.OPEN:
        reason = f": {session.reason}" if session.reason else ""
        raise Conflict(
            f"this upload is {session.state}{reason}; start a new upload", code=f"upload_{session.state}"
        )
