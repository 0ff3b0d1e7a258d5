"""Secure rounds over the API: the SecAgg+ stages of an experiment with ``secure_aggregation``.

Each round is one ``SecureRoundRow`` holding ``fma_core.secagg.SecureRound`` as JSON; every client
request reads it under the row's lock, makes one protocol step, lets the round move on
(``SecureRound.advance``: everyone answered, or the stage's deadline passed) and saves it. The
masked inputs go to the weight store under ``secure/`` (uint64, little-endian, the weight first);
the database keeps public keys, the ciphertexts it relays and the shares revealed at unmasking,
never an update in the clear.

When the unmasking stage closes with enough shares, the round moves to ``summing`` and, once that
commits, is handed to the runner (``secure_round_unmask_requested``, announced again by every sweep
while it stays there), never summed within a request: ``secure_round_unmask`` reads the survivors'
masked inputs forward, block by block, sums them modulo 2^64, removes the masks, dequantizes the
weighted mean and records it as the round's aggregate. The row's lock (taken by one worker; another
skips it) and the aggregate's unique round number make it happen once; a worker killed meanwhile
rolls back and the next sweep hands the round out again. ``lifecycle.finish_if_reached`` in that
transaction ends the experiment when its ``finish_when`` holds. Clients poll until the aggregate
exists. Below the threshold the round fails with its reason, its masked inputs are deleted, and the
next request opens the round again.

The experiment's lifecycle: only a collecting experiment opens a round. A paused one opens none (a
client asking is told to wait, stage ``paused``) but lets a round already open run to its end, as a
plain round under a lease commits after a pause. An ended one (finished, stopped, budget_spent)
refuses every stage request with 409 ``experiment_ended``, and its open round fails (its masked
inputs deleted) at that request or the next sweep, or when its summing ends; a round already
unmasked can still be read.
"""

from __future__ import annotations

import base64
import binascii
import io
import secrets
import time
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
from django.db import IntegrityError, connection, transaction

from fma_core.secagg import PublicKeys, RoundParams, SecureRound, Share, StageError
from fma_core.secagg.config import SecureAggregation
from fma_core.secagg.server import InconsistentShares
from fma_core.weights import TensorSpec, open_weights, to_bytes
from fma_django import lifecycle, sampling, selectors
from fma_django.errors import Conflict, NotFound, ValidationFailed
from fma_django.models import (
    Client,
    EventKind,
    Experiment,
    ExperimentState,
    ModelAggregate,
    SecureRoundRow,
    UpdateKind,
)
from fma_django.services import event_record, experiment_spec
from fma_django.signals import announce_secure_round_unmask_requested
from fma_django.storage import weight_store

ELEMENT = 8  # bytes of one field element (uint64)
BLOCK = 1 << 16  # elements read per masked input per step
OPEN_STAGES = SecureRoundRow.OPEN_STAGES
LIVE_STAGES = SecureRoundRow.LIVE_STAGES
SUMMING = SecureRoundRow.SUMMING


def _config(experiment: Experiment) -> SecureAggregation:
    config = SecureAggregation.from_config(experiment.secure_aggregation)
    if config is None:
        raise Conflict(
            f"experiment {experiment.pk} does not aggregate securely: push updates as usual",
            code="not_secure_aggregation",
        )
    return config


def _spec(experiment: Experiment) -> TensorSpec:
    spec = experiment_spec(experiment)
    if spec is None:
        raise Conflict("the experiment declares no tensors yet", code="secure_aggregation")
    return spec


def _invited(experiment: Experiment, round_number: int) -> list[str]:
    selection = sampling.round_selection(experiment, round_number)
    return sorted(sampling.counted_clients(experiment, selection))


def _refuse_ended(experiment: Experiment) -> None:
    """409 ``experiment_ended`` if the experiment has ended (read afresh), after failing its open rounds."""
    try:
        lifecycle.accepting_require(experiment)
    except Conflict:
        _advance_rows(
            SecureRoundRow.objects.filter(experiment=experiment, stage__in=OPEN_STAGES), time.time()
        )
        raise


def _open_round(experiment: Experiment, now: float) -> SecureRoundRow | None:
    """The current round's open row, made now if this is its first need (a failed one is kept, and a new
    attempt opened beside it); None while the experiment is paused and no round is open."""
    round_number = sampling.current_round(experiment.pk)
    row = (
        SecureRoundRow.objects.filter(experiment=experiment, round_number=round_number, stage__in=LIVE_STAGES)
        .order_by("-pk")
        .first()
    )
    if row is not None:
        return row
    state = Experiment.objects.filter(pk=experiment.pk).values_list("state", flat=True).get()
    if state != ExperimentState.COLLECTING:  # paused (an ended experiment was refused before)
        return None
    config = _config(experiment)
    spec = _spec(experiment)
    params = RoundParams(
        experiment=f"{experiment.pk}.{secrets.token_hex(8)}",  # one context per attempt
        round=round_number,
        graph_seed=secrets.randbits(63),
        threshold=config.threshold,
        degree=config.degree,
        field=config.field,
    )
    invited = _invited(experiment, round_number)
    length = sum(t.size for t in spec)
    try:
        state = SecureRound.start(params, invited, length, config.stage_seconds, now)
    except ValueError as error:
        raise Conflict(str(error), code="secure_aggregation") from None
    try:
        with transaction.atomic():
            return SecureRoundRow.objects.create(
                experiment=experiment, round_number=round_number, stage=state.stage, state=state.to_json()
            )
    except IntegrityError:  # another request opened it first
        return SecureRoundRow.objects.get(
            experiment=experiment, round_number=round_number, stage__in=LIVE_STAGES
        )


def _row_locked(experiment: Experiment, round_id: int) -> SecureRoundRow:
    row = SecureRoundRow.objects.select_for_update().filter(pk=round_id, experiment=experiment).first()
    if row is None:
        raise NotFound(f"experiment {experiment.pk} has no secure round {round_id}")
    return row


def _save(row: SecureRoundRow, state: SecureRound, now: float) -> None:
    """Let the round move on, hand it to the runner once it can be unmasked (after the commit), and
    store it (inside the row's lock).

    The experiment's row is locked too, so a state change (``lifecycle``) is either seen here, and a
    round of an ended experiment fails instead of moving on, or waits until this round is stored."""
    row.experiment = Experiment.objects.select_for_update().get(pk=row.experiment_id)
    _end_if_ended(row, state)
    summable = state.advance(now) is not None  # the shares suffice: the sum is the runner's job
    if state.stage == "failed":
        _failed(row, state)
    row.stage = SUMMING if summable else state.stage
    row.state = state.to_json()
    row.save()
    if summable:
        transaction.on_commit(lambda: announce_secure_round_unmask_requested(row.pk))


def _end_if_ended(row: SecureRoundRow, state: SecureRound) -> None:
    """Fail the round if its experiment (``row.experiment``, read under its lock) has ended."""
    if row.experiment.state in lifecycle.ENDED:
        ended = ExperimentState(row.experiment.state).label.lower()
        reason = row.experiment.state_reason
        state.end(f"the experiment is {ended}{': ' + reason if reason else ''}")


def _failed(row: SecureRoundRow, state: SecureRound) -> None:
    """Record a failed round: its reason, its event; its masked inputs go once that commits."""
    row.reason = state.reason
    _remove_inputs(state)
    event_record(
        kind=EventKind.ROUND_FAILED,
        experiment=row.experiment,
        round=row.round_number,
        reason=f"secure aggregation: {state.reason}",
    )


def secure_round_unmask(round_id: int) -> SecureRoundRow | None:
    """Sum, unmask and record the aggregate of a ``summing`` round (the runner's job); the round as it
    ended, or None if there was nothing to do (done already, or another worker holds it).

    The row stays locked while its masked inputs are read, so one worker sums it; the experiment is
    locked only at the end, to record the aggregate (or fail the round if the experiment ended
    meanwhile) without holding back its other requests while summing."""
    with transaction.atomic():
        rows = SecureRoundRow.objects.filter(pk=round_id, stage=SUMMING)
        if connection.features.has_select_for_update_skip_locked:
            row = rows.select_for_update(skip_locked=True).first()  # PostgreSQL: another worker sums it
        else:
            row = rows.select_for_update().first()
        if row is None:
            return None
        state = SecureRound.from_json(row.state)
        try:
            row.aggregate = _commit_mean(row, state, state.unmasker())
        except InconsistentShares as error:  # no mean to record (the weights' sum is not positive):
            row.aggregate = None  # the round fails with why, instead of every sweep summing it again
            state.end(f"unmasking: {error}")
        if row.aggregate is None:
            _end_if_ended(row, state)
            _failed(row, state)
        else:
            _remove_inputs(state)
        row.stage = state.stage
        row.state = state.to_json()
        row.save()
    return row


def secure_rounds_summing() -> list[int]:
    """The secure rounds waiting for (or in) their sum, oldest first: the sweep hands them out again."""
    return list(
        SecureRoundRow.objects.filter(stage=SUMMING).order_by("updated_on", "pk").values_list("pk", flat=True)
    )


def secure_rounds_unmask_again() -> int:
    """Announce every round left ``summing`` again (a notification lost, a worker killed while summing,
    whose transaction rolled back); how many. One being summed is skipped by its worker's lock."""
    waiting = secure_rounds_summing()
    for round_id in waiting:
        announce_secure_round_unmask_requested(round_id)
    return len(waiting)


def _remove_inputs(state: SecureRound) -> None:
    """Delete the round's masked inputs once the transaction that stops naming them commits (a crash
    in between leaves them to the orphan sweep: no open round names them any more)."""
    keys = list(state.inputs.values())

    def remove() -> None:
        store = weight_store()
        for key in keys:
            store.delete(key)

    transaction.on_commit(remove)


def _commit_mean(row: SecureRoundRow, state: SecureRound, unmasker: Any) -> ModelAggregate | None:
    """Sum the survivors' masked inputs block by block, unmask, dequantize, write and record the aggregate;
    None (its bytes removed) if the experiment ended meanwhile (``row.experiment`` is then locked and fresh)."""
    started = time.perf_counter()
    experiment = row.experiment
    spec = _spec(experiment)
    store = weight_store()
    streams: list[BinaryIO] = [store.open(state.inputs[c]) for c in state.survivors]
    try:
        first = np.zeros(1, dtype=np.uint64)
        for stream in streams:
            first += _read_elements(stream, 1)
        weight_sum = unmasker.weight_sum(int(first[0]))
        parent = selectors.latest_aggregate(experiment)
        base_key = parent.weights_key if parent else selectors.initial_weights_key(experiment.pk)
        base = open_weights(store.open(base_key)) if experiment.update_kind == UpdateKind.DELTA else None
        tensors = {}
        element = 1
        for info in spec:
            out = np.empty(info.size, dtype=np.float64)
            for start in range(0, info.size, BLOCK):
                count = min(BLOCK, info.size - start)
                total = np.zeros(count, dtype=np.uint64)
                for stream in streams:
                    total += _read_elements(stream, count)
                out[start : start + count] = unmasker.mean(element + start, total, weight_sum)
            element += info.size
            if base is not None:
                out += base.read(info.name).astype(np.float64).ravel()
            tensors[info.name] = out.astype(info.numpy_dtype).reshape(info.shape)
        if base is not None:
            base.close()
    finally:
        for stream in streams:
            stream.close()
    key = f"aggregates/{experiment.pk}/r{row.round_number}-secure-{row.pk}.safetensors"
    stored = store.put(key, io.BytesIO(to_bytes(tensors)))
    row.experiment = experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
    if experiment.state in lifecycle.ENDED:
        store.delete(key)
        return None
    aggregate = ModelAggregate.objects.create(
        experiment=experiment,
        parent=parent,
        round_number=row.round_number,
        weights_key=key,
        content_id=stored.sha256,
        size_bytes=stored.size,
        aggregator=experiment.aggregator,
        aggregator_params=dict(experiment.aggregator_params or {}),
        duration_seconds=time.perf_counter() - started,
        report={"secure_aggregation": {"stages": dict(state.counts), "invited": len(state.invited)}},
    )
    event_record(
        kind=EventKind.ROUND_COMPLETED,
        experiment=experiment,
        round=row.round_number,
        aggregate=aggregate.pk,
        updates=len(state.survivors),
        duration_seconds=aggregate.duration_seconds,
        size_bytes=aggregate.size_bytes,
        secure_aggregation=dict(state.counts),
    )
    lifecycle.finish_if_reached(experiment)  # the round limit, a training-metric target
    return aggregate


def _read_elements(stream: BinaryIO, count: int) -> np.ndarray:
    data = stream.read(count * ELEMENT)
    if len(data) != count * ELEMENT:
        raise OSError("a stored masked input is shorter than the round's length")
    return np.frombuffer(data, dtype="<u8")


# -- what a client sees ----------------------------------------------------------------------------


def _paused_view(experiment: Experiment, now: float) -> dict[str, Any]:
    """What a client asking for the current round of a paused experiment sees: wait, none is open."""
    config = _config(experiment)
    return {
        "id": None,
        "round": sampling.current_round(experiment.pk),
        "stage": "paused",
        "deadline": now + config.stage_seconds,
        "reason": "the experiment is paused: no secure round opens until it collects again",
        "counts": {},
        "aggregate": None,
        "action": "wait",
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValidationFailed(f"{what}: base64 text expected", code="secagg_invalid")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValidationFailed(f"{what}: not base64", code="secagg_invalid") from None


def _view(row: SecureRoundRow, state: SecureRound, client: Client) -> dict[str, Any]:
    """The round as ``client`` needs it: the stage, what it is asked to do, and the material for it."""
    me = str(client.uuid)
    answer: dict[str, Any] = {
        "id": row.pk,
        "round": row.round_number,
        "stage": row.stage,
        "deadline": state.deadline,
        "reason": state.reason,
        "counts": dict(state.counts),
        "params": state.params.as_json(),
        "weighted": row.experiment.aggregator == "fedavg",
        "length": state.length,
        "tensors": _spec(row.experiment).names,
        "aggregate": row.aggregate_id,
        "action": {"unmasked": "done", "failed": "failed"}.get(row.stage, "wait"),
    }
    if state.stage == "advertise":
        if me not in state.invited:
            answer["action"] = "not_invited"
        elif me not in state.keys:
            answer["action"] = "advertise"
    elif state.stage == "share_keys":
        if me not in state.roster:
            answer["action"] = "dropped"
        elif me not in state.outbox:
            answer["action"] = "share_keys"
            answer["roster"] = {
                c: [_b64(k.encryption), _b64(k.masking)] for c, k in state.roster_keys(me).items()
            }
    elif state.stage == "masked_input":
        if me not in state.shared:
            answer["action"] = "dropped"
        elif me not in state.inputs:
            answer["action"] = "masked_input"
            answer["inbox"] = {c: _b64(ct) for c, ct in state.inbox(me).items()}
    elif state.stage == "unmasking":
        if me not in state.survivors:
            answer["action"] = "dropped"
        elif me not in state.revealed:
            answer["action"] = "unmasking"
            answer["survivors"] = state.survivors_for(me)
    return answer


def secure_round_get(
    *, experiment: Experiment, client: Client, round_id: int | None = None
) -> dict[str, Any]:
    """The current secure round (opened now if none is), or round ``round_id``, as ``client`` sees it.

    A poll only reads; it writes only to move a round whose stage deadline has passed (the answers
    themselves move a stage on as soon as everyone expected has answered)."""
    now = time.time()
    if round_id is None:
        _refuse_ended(experiment)
        opened = _open_round(experiment, now)
        if opened is None:
            return _paused_view(experiment, now)
        round_id = opened.pk
    row = SecureRoundRow.objects.filter(pk=round_id, experiment=experiment).first()
    if row is None:
        raise NotFound(f"experiment {experiment.pk} has no secure round {round_id}")
    if row.stage != "unmasked":  # the round that finished the experiment can still be read
        _refuse_ended(experiment)
    state = SecureRound.from_json(row.state)
    if row.stage in OPEN_STAGES and now >= state.deadline:  # a passed deadline moves it on, under the lock
        with transaction.atomic():
            row = _row_locked(experiment, round_id)
            state = SecureRound.from_json(row.state)
            if row.stage in OPEN_STAGES:
                _save(row, state, now)
    return _view(row, state, client)


def secure_round_submit(
    *, experiment: Experiment, client: Client, round_id: int, stage: str, payload: Mapping[str, Any]
) -> dict[str, Any]:
    """One client step of the keys or unmasking stages (JSON); a retry with the same content is no change."""
    me = str(client.uuid)
    _refuse_ended(experiment)
    now = time.time()
    if SecureRoundRow.objects.filter(pk=round_id, experiment=experiment, stage=SUMMING).exists():
        # its worker holds the row's lock while summing: refused without waiting for it
        raise Conflict(f"the secure round is being summed, not at stage {stage!r}", code="secagg_stage")
    with transaction.atomic():
        row = _row_locked(experiment, round_id)
        state = SecureRound.from_json(row.state)
        try:
            if stage == "advertise":
                keys = PublicKeys(
                    _unb64(payload.get("encryption"), "encryption"), _unb64(payload.get("masking"), "masking")
                )
                state.advertise(me, keys)
            elif stage == "share_keys":
                shares = payload.get("shares")
                if not isinstance(shares, Mapping):
                    raise ValidationFailed("shares: an object, neighbour → ciphertext", code="secagg_invalid")
                state.share_keys(me, {str(j): _unb64(ct, f"shares[{j}]") for j, ct in shares.items()})
            elif stage == "unmasking":
                shares = payload.get("shares")
                if not isinstance(shares, list) or not all(
                    isinstance(s, list) and len(s) == 3 for s in shares
                ):
                    raise ValidationFailed("shares: a list of [owner, kind, share]", code="secagg_invalid")
                state.reveal(me, [Share(str(o), str(k), _unb64(v, "share")) for o, k, v in shares])
            else:
                raise ValidationFailed(
                    f"stage: advertise, share_keys or unmasking, not {stage!r}", code="secagg_invalid"
                )
        except StageError as error:
            raise Conflict(str(error), code=error.code) from None
        except ValueError as error:
            raise ValidationFailed(str(error), code="secagg_invalid") from None
        _save(row, state, now)
        return _view(row, state, client)


def secure_round_masked_input(
    *, experiment: Experiment, client: Client, round_id: int, stream: BinaryIO, size: int | None
) -> dict[str, Any]:
    """Store ``client``'s masked input (exactly the round's length + 1 uint64 elements) and record where.

    The stage is checked before a byte is stored, the bytes are stored outside the row's lock (clients
    upload side by side), and recorded under it; if the stage closed meanwhile, the bytes are removed.
    """
    me = str(client.uuid)
    _refuse_ended(experiment)
    row = SecureRoundRow.objects.filter(pk=round_id, experiment=experiment).first()
    if row is None:
        raise NotFound(f"experiment {experiment.pk} has no secure round {round_id}")
    state = SecureRound.from_json(row.state)
    expected = (state.length + 1) * ELEMENT
    if size != expected:
        raise ValidationFailed(
            f"a masked input of this round is {expected} bytes ({state.length} values and the weight, "
            f"uint64 little-endian), not {size}",
            code="secagg_invalid",
        )
    try:
        state.inbox(me)  # at this stage, and still in the round: refused before a byte is stored
    except StageError as error:
        raise Conflict(str(error), code=error.code) from None
    store = weight_store()
    key = f"secure/{experiment.pk}/{row.pk}/{me}-{secrets.token_hex(4)}.u64"
    stored = store.put(key, stream, max_bytes=expected)
    if stored.size != expected:
        store.delete(key)
        raise ValidationFailed(f"the body held {stored.size} bytes, not {expected}", code="secagg_invalid")
    try:
        with transaction.atomic():
            row = _row_locked(experiment, round_id)
            state = SecureRound.from_json(row.state)
            if me in state.inputs:  # a retry after a lost answer: the first input stands
                store.delete(key)
                return _view(row, state, client)
            try:
                state.masked_input(me, key)
            except StageError as error:
                raise Conflict(str(error), code=error.code) from None
            _save(row, state, time.time())
            return _view(row, state, client)
    except Exception:
        store.delete(key)
        raise


def secure_rounds_advance(*, now: float | None = None) -> int:
    """Move every open secure round whose stage deadline has passed, and fail those of ended experiments
    (the runners' sweep); how many moved."""
    now = time.time() if now is None else now
    return _advance_rows(SecureRoundRow.objects.filter(stage__in=OPEN_STAGES), now)


def _advance_rows(rows: Any, now: float) -> int:
    """Move each of ``rows`` (a queryset) still open whose deadline has passed or whose experiment has
    ended, one transaction each; how many changed stage."""
    moved = 0
    for round_id in rows.values_list("pk", flat=True):
        with transaction.atomic():
            row = (
                SecureRoundRow.objects.select_for_update().filter(pk=round_id, stage__in=OPEN_STAGES).first()
            )
            if row is None:
                continue
            state = SecureRound.from_json(row.state)
            if now >= state.deadline or row.experiment.state in lifecycle.ENDED:
                before = state.stage
                _save(row, state, now)
                moved += state.stage != before
    return moved
