"""Differential privacy on the database: the experiment's noise key, the accountant's charges, the
ledger as the API shows it, and the stop when the budget is spent (``fma_core.privacy``).

The key is made on first need and kept in ``Experiment.privacy_secret``, a column no serializer,
admin form, export or log shows; whoever computes a shard of a round reads it here, so it never
travels in a plan. What each client has been charged is counted from the lineage (the rounds its
consumed updates went into), and every aggregate's report keeps the ε spent after it: both live in
the database, so restarts and takeovers read them back unchanged.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.db.models import Count

from fma_core.privacy import REPORT_SECTION, PrivacyPolicy
from fma_django import lifecycle
from fma_django.models import Experiment, ExperimentState, ModelAggregate, ModelUpdate, UpdateStatus


def privacy_secret(experiment_pk: int) -> bytes:
    """The experiment's noise key, made now if it has none (of two requests at once, the first one
    written is the key: the update only fills an empty column)."""
    stored = Experiment.objects.filter(pk=experiment_pk).values_list("privacy_secret", flat=True).get()
    if stored:
        return bytes(stored)
    Experiment.objects.filter(pk=experiment_pk, privacy_secret__isnull=True).update(
        privacy_secret=secrets.token_bytes(32)
    )
    return bytes(Experiment.objects.filter(pk=experiment_pk).values_list("privacy_secret", flat=True).get())


def contributions(experiment_pk: int) -> dict[str, int]:
    """For each client, how many committed rounds its updates went into."""
    rows = (
        ModelUpdate.objects.filter(experiment_id=experiment_pk, status=UpdateStatus.CONSUMED)
        .values("client__uuid")
        .annotate(rounds=Count("aggregate", distinct=True))
        .values_list("client__uuid", "rounds")
    )
    return {str(uuid): rounds for uuid, rounds in rows}


def ledger(experiment: Experiment) -> dict[str, Any] | None:
    """What the API shows of the budget: ε spent after the newest round (0 before any), δ, the budget,
    the rounds the most-charged client went into; None without privacy."""
    try:
        policy = PrivacyPolicy.from_config(experiment.privacy)
    except Exception:  # a setting stored before it was checked shows no ledger rather than fail the page
        return None
    if policy is None:
        return None
    report = (
        ModelAggregate.objects.filter(experiment=experiment)
        .order_by("-round_number")
        .values_list("report", flat=True)
        .first()
    )
    section = (report or {}).get(REPORT_SECTION) or {}
    return {
        "epsilon": section.get("epsilon", 0.0),
        "delta": policy.delta,
        "budget_epsilon": policy.epsilon,
        "charged_rounds": section.get("charged_rounds", 0),
        "clip_bound": section.get(
            "next_clip_bound", policy.bound if policy.bound else policy.adaptive.initial
        ),
        "budget_spent": experiment.state == ExperimentState.BUDGET_SPENT,
    }


def budget_spent(experiment_pk: int, detail: str) -> None:
    """The budget cannot pay for the next round: the experiment ends as ``budget_spent`` (final), with
    the reason, once however many workers find it (``fma_django.lifecycle``)."""
    experiment = Experiment.objects.get(pk=experiment_pk)
    lifecycle.experiment_end(experiment=experiment, state=ExperimentState.BUDGET_SPENT, reason=detail)
