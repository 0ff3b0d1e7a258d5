"""Update ingestion: how a client's bytes become an accepted update, in either of two forms.

- One request (``update_submit``): a safetensors body, its metadata in headers or the query. The
  original's v1 JSON ``data`` (``update_submit_legacy_json``) is converted and takes this path.
- An upload session (``upload_start``, ``upload_part_put``, ``upload_complete``): the bytes in
  parts, in parallel and resumably, each to its target (a presigned store URL where the store
  gives one, else the API's part endpoint). Above ``FMA_UPLOAD_INLINE_CHECK_BYTES`` the check
  leaves the complete request: the session waits in ``checking`` until a runner calls
  ``upload_check``, the same code (``housekeeping`` expires sessions left open and hands out
  again those left ``checking``).

Both forms check the metadata before a byte is stored (``update_check_metadata``), check the
stored bytes as weights of the experiment, and end in ``update_accept``, the one function that
turns stored bytes into an update. A refusal is recorded (an ``update_rejected`` event), raised as
a typed ``fma_django.errors`` exception (``api.exceptions`` gives it its status) and leaves no
bytes behind (``storage.removed_on_failure``).
"""

from __future__ import annotations

import hashlib
import io
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, BinaryIO, NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q, Subquery
from django.utils import timezone

from fma_core.connectors import StoredObject, UploadedPart
from fma_core.errors import InvalidWeights, ObjectNotFound
from fma_core.weights import from_legacy_json, to_bytes, validate
from fma_core.weights.scan import Scanned, scan
from fma_django import json_schemas, lifecycle, sampling
from fma_django.errors import (
    Conflict,
    DomainError,
    TooLarge,
    UploadIncomplete,
    ValidationFailed,
    WeightsInvalid,
)
from fma_django.limits import IDEMPOTENCY_KEY_PATTERN, IDEMPOTENCY_KEY_RULE, MAX_BIGINT, whole_number_range
from fma_django.metrics import metrics_check
from fma_django.models import (
    Client,
    EventKind,
    Experiment,
    ModelAggregate,
    ModelUpdate,
    UpdateKind,
    UploadSession,
    UploadState,
)
from fma_django.services import check_enrolled, event_record, experiment_spec
from fma_django.signals import announce_round_may_be_ready, announce_upload_check_requested
from fma_django.storage import max_update_bytes, removed_on_failure, weight_store

MAX_PARTS = 10_000  # S3's limit, the strictest store's: larger uploads get larger parts
PART_URL_SECONDS = 3600
# A one-request body up to this size (fma-client's single_request_bytes: every body it sends in one
# request) is read whole in memory and checked there, before it is stored; a larger one is
# streamed to the store and checked there, so memory stays at one chunk.
IN_MEMORY_BYTES = 4 * 1024 * 1024


# What both forms share: the metadata, the refusal, the accepted update


def update_check_metadata(
    *,
    experiment: Experiment,
    client: Client,
    num_examples: int,
    base_aggregate_id: int | None,
    metrics: Any,
    size: int | None,
    update_kind: str = UpdateKind.WEIGHTS,
) -> tuple[int, ModelAggregate | None, int]:
    """Check an update's metadata and size before any byte is stored: ``(base_round, base, limit)``.

    ``limit`` is the largest update the experiment takes; a refusal is recorded as a rejection. A
    client the current round did not select is refused first (``sampling``), before it sends a byte.
    ``update_kind`` is what the client says it sends: weights read as a delta (or the reverse)
    would aggregate into garbage, so a client that has not learnt the experiment's kind is told.
    Whether the experiment still takes updates is checked on ``experiment`` as the request read it;
    ``update_accept`` reads its state again before the insert.
    """
    try:
        lifecycle.accepting_require(experiment, afresh=False)
        plain_updates_require(experiment)
        sampling.participation_require(experiment, client)
        if update_kind != experiment.update_kind:
            raise ValidationFailed(
                f"experiment {experiment.pk} takes updates as {experiment.update_kind!r}, not "
                f"{update_kind!r}: pull the current model (fma-client then sends what the experiment "
                "takes), or declare update_kind",
                code="wrong_update_kind",
            )
        if (
            not isinstance(num_examples, int)
            or isinstance(num_examples, bool)
            or not 1 <= num_examples <= MAX_BIGINT
        ):
            raise ValidationFailed(
                f"num_examples must be {whole_number_range(1, MAX_BIGINT)}, not {str(num_examples)[:100]}"
            )
        base = None
        if base_aggregate_id is not None:
            base = ModelAggregate.objects.filter(pk=base_aggregate_id, experiment=experiment).first()
            if base is None:
                raise ValidationFailed(
                    f"base_aggregate {base_aggregate_id} is not an aggregate of this experiment",
                    code="invalid_base",
                )
        if experiment.metrics_schema is not None:
            json_schemas.schema_validate(
                field="metrics_schema", schema=experiment.metrics_schema, value=metrics, what="metrics"
            )
        metrics_check(metrics)
        limit = max_update_bytes(experiment.max_update_bytes)
        if size is not None and size > limit:
            raise TooLarge(f"the update is {size:,} bytes; the limit is {limit:,} bytes")
    except DomainError as error:
        _rejected(error, experiment, client)
        raise
    return (base.round_number if base else 0), base, limit


def plain_updates_require(experiment: Experiment) -> None:
    """An experiment with secure aggregation takes no update in the clear (409 ``secure_aggregation``)."""
    if experiment.secure_aggregation is not None:
        raise Conflict(
            f"experiment {experiment.pk} aggregates securely: the server takes only masked inputs, through "
            "the secure_round/ stages, and nothing was stored; push with fma-client, which runs them",
            code="secure_aggregation",
        )


def check_idempotency_key(key: str | None) -> None:
    """Refuse a key its column cannot hold, or one that is not plain text; None or "" is no key."""
    if key and not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise ValidationFailed(
            f"idempotency key {key[:40]!r}{'…' if len(key) > 40 else ''} ({len(key):,} characters): "
            f"an idempotency key is {IDEMPOTENCY_KEY_RULE}",
            code="invalid_idempotency_key",
        )


def update_key(experiment: Experiment) -> str:
    """A new weight-store key for an update's bytes."""
    return f"updates/{experiment.pk}/{uuid.uuid4().hex}.safetensors"


def _rejected(error: DomainError, experiment: Experiment, client: Client, **detail: Any) -> DomainError:
    """Record why an update was refused (``detail``: e.g. its upload); the error, to raise."""
    event_record(
        kind=EventKind.UPDATE_REJECTED,
        experiment=experiment,
        client=client,
        reason=error.detail,
        code=error.code,
        **detail,
    )
    return error


def update_accept(
    *,
    experiment: Experiment,
    client: Client,
    stored: StoredObject,
    base_aggregate: ModelAggregate | None,
    base_round: int,
    num_examples: int,
    metrics: Any,
    idempotency_key: str | None,
) -> tuple[ModelUpdate, bool]:
    """Stored, checked weights become an accepted update: ``(update, created)``.

    Both forms end here, so the same rules decide: a twin (same client, base and content) or a
    concurrent retry returns the first update and drops these bytes; otherwise the update is
    created and the round announced once the transaction commits, if the client takes part in the
    current round (``sampling``: checked again here, since the round may have moved on since the
    upload began). The caller checked the metadata and the bytes. The twin and the experiment's
    state are one read (``_current``).
    """
    twin = Q(experiment=experiment, client=client, base_round=base_round, content_id=stored.sha256)
    with removed_on_failure(stored.key):
        current = _current(experiment, twin)
        first = None if current.twin_pk is None else ModelUpdate.objects.get(pk=current.twin_pk)
        if first is None:
            try:  # the round may have moved on, or the experiment ended, since the metadata was checked
                lifecycle.accepting_require(current, afresh=False)
                plain_updates_require(experiment)
                sampling.participation_require(experiment, client)
            except DomainError as error:
                raise _rejected(error, experiment, client) from None
            try:
                with transaction.atomic():
                    update = ModelUpdate.objects.create(
                        experiment=experiment,
                        client=client,
                        base_aggregate=base_aggregate,
                        base_round=base_round,
                        num_examples=num_examples,
                        metrics=metrics,
                        idempotency_key=idempotency_key or None,
                        weights_key=stored.key,
                        content_id=stored.sha256,
                        size_bytes=stored.size,
                    )
                    event_record(
                        kind=EventKind.UPDATE_ACCEPTED,
                        experiment=experiment,
                        client=client,
                        update=update.pk,
                        size=stored.size,
                    )
                    transaction.on_commit(partial(announce_round_may_be_ready, experiment.pk))
                return update, True
            except IntegrityError:  # a concurrent or earlier twin won: keep its row
                if idempotency_key:
                    twin |= Q(client=client, idempotency_key=idempotency_key)
                first = ModelUpdate.objects.filter(twin).first()
                if first is None:
                    raise
    weight_store().delete(stored.key)
    return first, False


def _current(experiment: Experiment, twin: Q) -> Experiment:
    """The experiment's state as it is now, with the id of the first update matching ``twin``
    (``twin_pk``, None if there is none yet): one statement where two separate reads would be."""
    first_twin = ModelUpdate.objects.filter(twin).values("pk")[:1]  # a unique constraint: one at most
    return (
        Experiment.objects.filter(pk=experiment.pk)
        .only("state", "state_reason")
        .annotate(twin_pk=Subquery(first_twin))
        .get()
    )


# One request


def update_submit(
    *,
    experiment: Experiment,
    client: Client,
    stream: BinaryIO,
    num_examples: int = 1,
    base_aggregate_id: int | None = None,
    metrics: Any = None,
    idempotency_key: str | None = None,
    content_length: int | None = None,
    update_kind: str = UpdateKind.WEIGHTS,
    sha256: str | None = None,
    enrollment_checked: bool = False,
) -> tuple[ModelUpdate, bool]:
    """Accept one update from a safetensors stream; returns ``(update, created)``.

    A body of at most ``IN_MEMORY_BYTES`` (``content_length``) is read into memory and checked
    against the experiment's tensor spec there, then stored; a larger one is streamed to the
    weight store (memory bounded by the store's chunk), then checked as stored. A retry (same
    idempotency key, or same client, base and content) returns the first update. ``sha256``,
    when the client declares it (fma-client does), must be the hash of the bytes received, as an
    upload session's is; it is checked before the tensors, so corrupted bytes are called that.
    ``enrollment_checked``: the caller found ``experiment`` among those the client sees
    (``selectors.experiments_visible``, which joins its live enrollment, as the API's lookup does),
    so checking the enrollment here would read the same rows again.
    """
    if not enrollment_checked:
        check_enrolled(experiment, client)
    check_idempotency_key(idempotency_key)
    declared = _declared_sha256(sha256, experiment, client)
    if idempotency_key:
        first = ModelUpdate.objects.filter(client=client, idempotency_key=idempotency_key).first()
        if first is not None:
            if first.experiment_id != experiment.pk:
                raise Conflict("this idempotency key was used for an update of another experiment")
            return first, False
    base_round, base, limit = update_check_metadata(
        experiment=experiment,
        client=client,
        num_examples=num_examples,
        base_aggregate_id=base_aggregate_id,
        metrics=metrics,
        size=content_length,
        update_kind=update_kind,
    )
    stored = _stored_checked(
        experiment, client, stream, content_length=content_length, limit=limit, declared=declared
    )
    return update_accept(
        experiment=experiment,
        client=client,
        stored=stored,
        base_aggregate=base,
        base_round=base_round,
        num_examples=num_examples,
        metrics=metrics,
        idempotency_key=idempotency_key,
    )


def _stored_checked(
    experiment: Experiment,
    client: Client,
    stream: BinaryIO,
    *,
    content_length: int | None,
    limit: int,
    declared: str | None,
) -> StoredObject:
    """The body stored under a new key once its hash and tensors are checked; a refusal is
    recorded and leaves nothing stored. A small body is checked in memory before it is written
    (one write, one hash: the store's); a larger one is checked as the store holds it."""
    store = weight_store()
    key = update_key(experiment)
    body = None
    if content_length is not None and content_length <= min(IN_MEMORY_BYTES, limit):
        body = _read_whole(stream, content_length)
        try:
            validate(body, experiment_spec(experiment), max_bytes=limit)
        except InvalidWeights as error:
            _check_declared(hashlib.sha256(body).hexdigest(), declared, experiment, client)
            raise _rejected(WeightsInvalid(str(error)), experiment, client) from None
        stream = io.BytesIO(body)
    with removed_on_failure(key):
        try:
            stored = store.put(key, stream, max_bytes=limit)
        except InvalidWeights as error:  # what WeightStore.put raises for a stream above max_bytes
            raise _rejected(TooLarge(str(error)), experiment, client) from None
        _check_declared(stored.sha256, declared, experiment, client)
        if body is None:
            try:
                with store.open_weights(key, max_bytes=limit) as reader:
                    validate(reader, experiment_spec(experiment))
            except InvalidWeights as error:
                raise _rejected(WeightsInvalid(str(error)), experiment, client) from None
    return stored


def _read_whole(stream: BinaryIO, length: int) -> bytes:
    """Up to ``length`` bytes of ``stream`` (fewer if it ends first: the check then finds the
    body truncated)."""
    chunks, received = [], 0
    while received < length and (chunk := stream.read(length - received)):
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def _check_declared(sha256: str, declared: str | None, experiment: Experiment, client: Client) -> None:
    """A refusal (400 ``hash_mismatch``), recorded, unless the bytes hash to the declared SHA-256."""
    if declared is not None and sha256 != declared:
        raise _rejected(
            ValidationFailed(
                f"the body has SHA-256 {sha256}, not the declared {declared}: it was "
                "corrupted on the way or the declared hash is wrong",
                code="hash_mismatch",
            ),
            experiment,
            client,
        )


def _declared_sha256(sha256: str | None, experiment: Experiment, client: Client) -> str | None:
    """A declared SHA-256 in lower case (None: none declared); a 400 unless it is 64 hex digits."""
    if not sha256:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise _rejected(
            ValidationFailed(f"sha256 must be 64 hexadecimal digits, not {sha256[:80]!r}", code="invalid"),
            experiment,
            client,
        )
    return sha256.lower()


def update_submit_legacy_json(
    *, experiment: Experiment, client: Client, data: Any, base_aggregate_id: int | None = None, **options: Any
) -> tuple[ModelUpdate, bool]:
    """The original's JSON ``data`` (a list of layers), converted to safetensors and then submitted."""
    try:
        if experiment.update_schema is not None:
            json_schemas.schema_validate(
                field="update_schema", schema=experiment.update_schema, value=data, what="data"
            )
        payload = to_bytes(from_legacy_json(data, experiment_spec(experiment)))
    except ValidationFailed as error:
        _rejected(error, experiment, client)
        raise
    except InvalidWeights as error:
        raise _rejected(WeightsInvalid(f"data: {error}"), experiment, client) from None
    return update_submit(
        experiment=experiment,
        client=client,
        stream=io.BytesIO(payload),
        base_aggregate_id=base_aggregate_id,
        content_length=len(payload),
        **options,
    )


# Upload sessions


def upload_part_bytes(size: int) -> int:
    """The part size for an upload of ``size`` bytes: ``FMA_UPLOAD_PART_BYTES``, grown to fit MAX_PARTS."""
    configured = int(settings.FMA_UPLOAD_PART_BYTES)
    return max(configured, -(-size // MAX_PARTS))


def upload_start(
    *,
    experiment: Experiment,
    client: Client,
    size: int,
    sha256: str | None,
    num_examples: int = 1,
    base_aggregate_id: int | None = None,
    metrics: Any = None,
    idempotency_key: str | None = None,
    update_kind: str = UpdateKind.WEIGHTS,
) -> tuple[UploadSession, bool]:
    """Open an upload of ``size`` bytes hashing to ``sha256``; returns ``(session, created)``.

    The metadata is checked now, so a client learns before sending any byte that its update
    would be refused (413 above the size limit). A retry with the same idempotency key
    returns the first session. ``sha256`` None leaves the hash to the completion
    (``upload_complete``), so that a client hashes its file in the same read that sends it.
    """
    check_enrolled(experiment, client)
    check_idempotency_key(idempotency_key)
    sha256 = sha256.lower() if sha256 else None
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
    base_round, base, _ = update_check_metadata(
        experiment=experiment,
        client=client,
        num_examples=num_examples,
        base_aggregate_id=base_aggregate_id,
        metrics=metrics,
        size=size,
        update_kind=update_kind,
    )
    store = weight_store()
    key = update_key(experiment)
    session = UploadSession(
        experiment=experiment,
        client=client,
        weights_key=key,
        size_bytes=size,
        sha256=sha256 or "",
        part_bytes=upload_part_bytes(size),
        num_examples=num_examples,
        base_aggregate=base,
        base_round=base_round,
        metrics=metrics,
        idempotency_key=idempotency_key or None,
    )
    session.store_upload_id = upload_id = store.start_upload(key, session.part_sizes())
    with removed_on_failure(key, upload_id=upload_id):
        try:
            with transaction.atomic():
                session.save()
            return session, True
        except (
            IntegrityError
        ):  # a concurrent start with the same idempotency key won: answer with its session
            first = UploadSession.objects.filter(client=client, idempotency_key=idempotency_key).first()
            if first is None:
                raise
    store.abort_upload(key, upload_id)
    return _same_upload(first, experiment, size, sha256), False


def _same_upload(
    session: UploadSession, experiment: Experiment, size: int, sha256: str | None
) -> UploadSession:
    """The first session of an idempotency key, if the retry describes the same bytes.

    A retry that declares no hash is compared by size only: its hash is compared when it
    completes (``_same_hash``).
    """
    if session.experiment_id != experiment.pk:
        raise Conflict("this idempotency key was used for an upload to another experiment")
    if session.size_bytes != size or (sha256 is not None and session.sha256 != sha256):
        raise _other_bytes()
    return session


def _other_bytes() -> Conflict:
    return Conflict(
        "this idempotency key was used for an upload of other bytes (another size or SHA-256); "
        "use a new key for a new update"
    )


def _declare_hash(session: UploadSession, sha256: str | None) -> None:
    """Record on the locked open session the hash its completion declares, if it was not declared
    at the start; a hash declared twice must be the same. Saved with the outcome of the completion."""
    if sha256 is None:
        if not session.sha256:
            raise ValidationFailed(
                "this upload was started without its SHA-256: complete it with sha256, the hash of the whole file",
                code="sha256_required",
            )
        return
    if session.sha256 and session.sha256 != sha256:
        raise ValidationFailed(
            f"the completion declares SHA-256 {sha256}, but the upload was started with {session.sha256}",
            code="hash_mismatch",
        )
    session.sha256 = sha256


def _same_hash(session: UploadSession, sha256: str | None) -> None:
    """A completion repeated after the session ended must describe the bytes it ended with: an
    idempotency key reused for other bytes of the same size is refused, not answered with the first update."""
    if sha256 is not None and session.sha256 != sha256:
        raise _other_bytes()


def upload_expires_at(session: UploadSession) -> datetime:
    """When ``housekeeping.uploads_expire_stale`` aborts the session if it is still open."""
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
    except InvalidWeights as error:  # what put_part raises for a stream above max_bytes
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


def upload_complete(*, session: UploadSession, sha256: str | None = None) -> Completion:
    """Complete an upload: join its parts and accept the update now, or hand the check to a runner.

    ``sha256`` is the whole file's hash, required here if the upload was started without it
    (``sha256_required``); the joined bytes are checked against it as against one declared at the
    start. Completing an ended session again with another hash is a conflict (409): the
    idempotency key was reused for other bytes.

    Missing or mis-sized parts leave the session open (``UploadIncomplete``: send them, then
    complete again). An upload above ``FMA_UPLOAD_INLINE_CHECK_BYTES`` moves to ``checking`` and,
    once that commits, is announced (``upload_check_requested``) so a runner calls
    ``upload_check``: reading a multi-GB object does not fit a request behind API Gateway.
    Otherwise the check runs here (``_check``); a refusal marks the session rejected and is
    raised once that has committed. The session row stays locked until the outcome is
    committed, so concurrent completes wait for the first and then return its update; completing
    again does too (and answers "still checking" while a runner checks).
    """
    with transaction.atomic():
        # No joins in the locking query: on PostgreSQL a query that waited for the lock sees the
        # row as committed, but joined rows as they were before, i.e. without the update.
        session = UploadSession.objects.select_for_update().get(pk=session.pk)
        sha256 = sha256.lower() if sha256 else None
        if session.state == UploadState.COMPLETED and session.update is not None:
            _same_hash(session, sha256)
            return Completion(session, session.update)
        if session.state == UploadState.CHECKING:
            _same_hash(session, sha256)
            return Completion(session, None)
        _require_open(session)
        check_enrolled(session.experiment, session.client)
        _declare_hash(session, sha256)
        try:
            inline_limit = getattr(settings, "FMA_UPLOAD_INLINE_CHECK_BYTES", None)  # None: any size
            if inline_limit is not None and session.size_bytes > int(inline_limit):
                _hand_to_runner(session)
                return Completion(session, None)
            return Completion(session, *_check(session))
        except UploadIncomplete:
            raise  # nothing to record: the session stays open for the parts the client missed
        except DomainError as error:
            refusal = _refuse(session, error)
    raise refusal


def upload_check(upload_id: str | uuid.UUID) -> UploadSession | None:
    """Check an upload left ``checking`` by ``upload_complete``: the session with its outcome
    (``completed`` with its update, or ``rejected`` with the reason), or None if there was
    nothing to do.

    Safe to run twice or at once: the session row is locked for the whole check, skipping a row
    another runner holds where the database can (PostgreSQL), and a session no longer
    ``checking`` is left alone. The outcome commits with the session, so a worker killed
    mid-check leaves it ``checking`` for the sweep (``housekeeping.uploads_check_again``) to hand
    out again.
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
        except UploadIncomplete:  # upload_complete saw every part; the store lost some since
            lost = UploadIncomplete(
                "the weight store lost parts of this upload after it was completed; start a new upload"
            )
            _refuse(session, _rejected(lost, session.experiment, session.client, upload=str(session.uuid)))
        except DomainError as error:
            _refuse(session, error)
    return session


def _hand_to_runner(session: UploadSession) -> None:
    """Move the locked session to ``checking`` and announce it once that commits. Its parts are
    listed first, so a client that missed some learns it now, when it can still send them."""
    _parts_received(session)
    session.state = UploadState.CHECKING
    session.save(update_fields=["state", "sha256", "updated_on"])
    transaction.on_commit(partial(announce_upload_check_requested, str(session.uuid)))


def _check(session: UploadSession) -> tuple[ModelUpdate, bool]:
    """Join the parts, read the object once and accept the update: ``(update, created)``, saved on
    the locked session in the caller's transaction. A refusal is raised recorded and with the
    object removed; a transient error keeps the joined object, so that completing again resumes."""
    experiment = session.experiment
    _join(session)
    with removed_on_failure(session.weights_key, on=DomainError):
        with weight_store().open(session.weights_key) as stream:
            scanned = scan(
                stream,
                size=session.size_bytes,
                spec=experiment_spec(experiment),
                max_bytes=max_update_bytes(experiment.max_update_bytes),
            )
        _check_scanned(session, scanned)
    update, created = update_accept(
        experiment=experiment,
        client=session.client,
        stored=StoredObject(key=session.weights_key, size=scanned.size, sha256=scanned.sha256),
        base_aggregate=session.base_aggregate,
        base_round=session.base_round,
        num_examples=session.num_examples,
        metrics=session.metrics,
        idempotency_key=session.idempotency_key,
    )
    session.state, session.update = UploadState.COMPLETED, update
    session.save(update_fields=["state", "update", "sha256", "updated_on"])
    return update, created


def _join(session: UploadSession) -> None:
    """Join the store's parts into the object (nothing to do if an earlier complete died after joining)."""
    parts = _parts_received(session)
    if parts is None:
        return
    try:
        with removed_on_failure(session.weights_key, upload_id=session.store_upload_id, on=InvalidWeights):
            weight_store().complete_upload(session.weights_key, session.store_upload_id, parts)
    except InvalidWeights as error:
        failed = ValidationFailed(f"the weight store could not join the parts: {error}")
        raise _rejected(failed, session.experiment, session.client, upload=str(session.uuid)) from None


def _parts_received(session: UploadSession) -> list[UploadedPart] | None:
    """Every part, in order, as the store holds it; None if an earlier complete died after joining them."""
    try:
        received = {
            part.number: part
            for part in weight_store().uploaded_parts(session.weights_key, session.store_upload_id)
        }
    except ObjectNotFound:
        if _joined(session):
            return None
        lost = ValidationFailed("the weight store no longer has this upload's parts; start a new upload")
        raise _rejected(lost, session.experiment, session.client, upload=str(session.uuid)) from None
    missing = [n for n in range(1, session.part_count + 1) if n not in received]
    wrong = [
        f"part {n} has {received[n].size:,} bytes, not {session.part_range(n)[1]:,}"
        for n in range(1, session.part_count + 1)
        if n in received and received[n].size != session.part_range(n)[1]
    ]
    if missing or wrong:
        problems = ([f"parts missing: {', '.join(map(str, missing))}"] if missing else []) + wrong
        raise UploadIncomplete(
            f"the upload is incomplete ({'; '.join(problems)}): send those parts again, then complete"
        )
    return [received[n] for n in range(1, session.part_count + 1)]


def _joined(session: UploadSession) -> bool:
    """Asked once the store no longer has the open session's multipart upload: whether its parts were
    joined into the object, i.e. a complete request died between the join and the commit of its
    outcome. Completing again checks and records that object."""
    return weight_store().exists(session.weights_key)


def _check_scanned(session: UploadSession, scanned: Scanned) -> None:
    """The joined bytes, as measured here, must be what the client said it would send, and
    weights the experiment takes. The hash is checked before the contents: corrupted parts are
    a transfer problem, not the client's tensors."""
    if scanned.size != session.size_bytes:
        error: DomainError = ValidationFailed(
            f"the parts add up to {scanned.size:,} bytes; the upload declared {session.size_bytes:,}",
            code="size_mismatch",
        )
    elif scanned.sha256 != session.sha256:
        error = ValidationFailed(
            f"the joined parts have SHA-256 {scanned.sha256}, not the declared {session.sha256}: "
            "a part was corrupted or the declared hash is wrong",
            code="hash_mismatch",
        )
    elif scanned.problem is not None:
        error = WeightsInvalid(str(scanned.problem))
    else:
        return
    raise _rejected(error, session.experiment, session.client, upload=str(session.uuid))


def _refuse(session: UploadSession, error: DomainError) -> DomainError:
    """Mark the locked session rejected with the refusal's reason and code; the error, to raise."""
    session.state, session.reason, session.reason_code = UploadState.REJECTED, error.detail, error.code
    session.save(update_fields=["state", "reason", "reason_code", "sha256", "updated_on"])
    return error


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
        event_record(
            kind=EventKind.UPLOAD_ABORTED,
            experiment=session.experiment,
            client=session.client,
            upload=str(session.uuid),
        )
    return session


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
