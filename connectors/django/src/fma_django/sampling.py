"""Per-round client sampling on the database: each round's draw, recorded once, and who may push.

An experiment with ``client_sampling`` (``fma_core.sampling``) takes only the clients drawn for
its current round (the round after its newest aggregate). The draw is made at the round's first
need (a client asking whether it is selected, a push, a claim) and stored as a ``RoundSelection``;
from then on it is read, never drawn again, so clients enrolling or revoked meanwhile do not
change it and every caller agrees (two drawing at once: the unique row keeps the first, the other
reads it). The round policy counts the selected clients still enrolled (``counted_clients``), so
``all_clients`` means all selected. A client not selected is refused before it sends a byte
(``participation_require``, called when an update's metadata is checked and again when its bytes
are accepted) with a ``NotSelected`` that says when to come back.

An update accepted while round r was current and left pending because round r's claim had been
taken (it arrived during aggregation) counts in round r + 1, as any late update does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max

from fma_core.policies import PendingUpdate, RoundState, policy_from_config
from fma_core.sampling import draw, sampling_from_config
from fma_django.columns import EpochMicroseconds, UUIDText
from fma_django.errors import NotSelected
from fma_django.models import (
    Client,
    Enrollment,
    Experiment,
    ModelAggregate,
    ModelUpdate,
    RoundSelection,
    UpdateStatus,
)
from fma_django.services import effective_round_policy

RETRY_SECONDS = 60  # FMA_SAMPLING_RETRY_SECONDS when unset


@dataclass(frozen=True)
class Participation:
    """Whether a client takes part in the experiment's current round; if not, when to ask again."""

    selected: bool
    round: int
    retry_after: int | None = None  # seconds, when not selected


def current_round(experiment_pk: int) -> int:
    """The round the next aggregate will be: one after the newest."""
    newest = ModelAggregate.objects.filter(experiment_id=experiment_pk).aggregate(Max("round_number"))
    return (newest["round_number__max"] or 0) + 1


def enrolled_clients(experiment_pk: int) -> frozenset[str]:
    """The clients enrolled now (neither they nor their enrollment revoked), each id printed by the database."""
    return frozenset(
        Enrollment.objects.filter(
            experiment_id=experiment_pk, revoked_at__isnull=True, client__revoked_at__isnull=True
        ).values_list(UUIDText("client__uuid"), flat=True)
    )


def round_selection(experiment: Experiment, round_number: int | None = None) -> RoundSelection | None:
    """Round ``round_number``'s draw (default: the current round's), made and recorded now if this is
    its first need; None when the experiment takes every client. With no client enrolled nothing is
    recorded (an empty draw would shut out whoever enrolls next) and the answer is an unsaved, empty
    selection."""
    sampling = sampling_from_config(experiment.client_sampling)
    if sampling is None:
        return None
    if round_number is None:
        round_number = current_round(experiment.pk)
    recorded = RoundSelection.objects.filter(experiment=experiment, round_number=round_number).first()
    if recorded is not None:
        return recorded
    enrolled = enrolled_clients(experiment.pk)
    selection = RoundSelection(
        experiment=experiment,
        round_number=round_number,
        seed=sampling.seed,
        mode=sampling.mode,
        clients=list(
            draw(sampling, round_number, enrolled, None if sampling.uniform else _last_rounds(experiment.pk))
        ),
        enrolled=len(enrolled),
    )
    if not enrolled:
        return selection
    try:
        with transaction.atomic():
            selection.save()
    except IntegrityError:  # another request drew this round first: its draw is the round's
        return RoundSelection.objects.get(experiment=experiment, round_number=round_number)
    return selection


def counted_clients(experiment: Experiment, selection: RoundSelection | None) -> frozenset[str]:
    """The clients a round's policy counts: the enrolled, or those of them its ``selection`` took."""
    enrolled = enrolled_clients(experiment.pk)
    return enrolled if selection is None else enrolled & frozenset(selection.clients)


def participation(experiment: Experiment, client: Client) -> Participation:
    """Whether ``client`` (enrolled) takes part in the current round, drawing the round if it is the first to ask."""
    round_number = current_round(experiment.pk)
    selection = round_selection(experiment, round_number)
    if selection is None or str(client.uuid) in selection.clients:
        return Participation(True, round_number)
    return Participation(False, round_number, retry_after(experiment, selection))


def participation_require(experiment: Experiment, client: Client) -> None:
    """``NotSelected`` (409, with when to come back) unless ``client`` takes part in the current round."""
    if experiment.client_sampling is None:
        return  # every enrolled client takes part: nothing to look up
    answer = participation(experiment, client)
    if not answer.selected:
        raise NotSelected(
            f"client {client.uuid} is not among the clients selected for round {answer.round} of "
            f"experiment {experiment.pk}; nothing was stored. Come back in {answer.retry_after} s "
            "(Retry-After), when the next round may select it",
            retry_after=answer.retry_after,
        )


def retry_after(experiment: Experiment, selection: RoundSelection) -> int:
    """Seconds until asking again may change the answer: until the round's deadline (its policy's
    ``wakeup_at``) when that comes sooner than ``FMA_SAMPLING_RETRY_SECONDS``, else that interval.
    The round can close sooner than its deadline (every selected client reported), and nothing
    foretells when; the interval bounds how late a client learns of the next draw."""
    poll = float(getattr(settings, "FMA_SAMPLING_RETRY_SECONDS", RETRY_SECONDS))
    now = time.time()
    pending = ModelUpdate.objects.filter(experiment=experiment, status=UpdateStatus.PENDING).values_list(
        UUIDText("client__uuid"), EpochMicroseconds("created_on")
    )
    state = RoundState(
        updates=tuple(PendingUpdate(client, received / 1_000_000) for client, received in pending),
        enrolled_clients=counted_clients(experiment, selection),
        now=now,
    )
    wakeup = policy_from_config(effective_round_policy(experiment)).wakeup_at(state)
    wait = poll if wakeup is None else min(poll, wakeup - now)
    return max(1, math.ceil(wait))


def _last_rounds(experiment_pk: int) -> dict[str, int]:
    """The round each client's newest consumed update went into (longest-waiting mode's order)."""
    rows = (
        ModelUpdate.objects.filter(experiment_id=experiment_pk, status=UpdateStatus.CONSUMED)
        .values("client__uuid")
        .annotate(last=Max("aggregate__round_number"))
        .values_list("client__uuid", "last")
    )
    return {str(uuid): last for uuid, last in rows}
