"""The round contract (tests/fma_core/round_contract.py) on DjangoMetadataStore, on the pass's database.

``make test`` runs this module in both of its passes: on SQLite, then on PostgreSQL
(``FMA_TEST_DATABASE=postgresql``), where a missing server fails the run. The long profile runs
only when asked: ``make test-long``, or
``FMA_TEST_DATABASE=postgresql pytest -m long tests/fma_django/test_round_contract.py``.

Every transaction commits for real (a transactional test, emptied once at its end), as in a
deployment; each example of the state machine starts on an experiment of its own, so it sees
no row of the examples before it.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

import pytest
from django.contrib.auth.models import AbstractBaseUser
from hypothesis import settings

from fma_core.weights import TensorSpec
from fma_django import services
from fma_django.models import ModelAggregate, ModelUpdate
from fma_django.store import DjangoMetadataStore

from ..fma_core.round_contract import Committed, FakeClock, check_round_contract, profiles

pytestmark = pytest.mark.django_db(transaction=True)


class DjangoRounds:
    """The round contract's view of a DjangoMetadataStore: rows written as the API writes them."""

    def __init__(self, clock: FakeClock, developer: AbstractBaseUser) -> None:
        self.metadata = DjangoMetadataStore(clock=clock)
        self.developer = developer
        self.client_pks: dict[str, int] = {}

    def create_experiment(self, spec: TensorSpec, *, clients: int) -> tuple[str, list[str]]:
        experiment = services.experiment_create(
            developer=self.developer,
            name=f"rounds {uuid.uuid4().hex}",  # names are unique per developer
            tensor_spec=spec.to_json(),
            open_enrollment=True,
        )
        for _ in range(clients):
            client, _ = services.client_register(experiment=experiment)
            self.client_pks[str(client.uuid)] = client.pk
        return str(experiment.pk), list(self.client_pks)

    def add_update(
        self,
        experiment_id: str,
        *,
        client_id: str,
        weights_key: str,
        sha256: str,
        size: int,
        num_examples: int,
    ) -> str:
        update = ModelUpdate.objects.create(
            experiment_id=int(experiment_id),
            client_id=self.client_pks[client_id],
            weights_key=weights_key,
            content_id=sha256,
            size_bytes=size,
            num_examples=num_examples,
        )
        return str(update.pk)

    def aggregates(self, experiment_id: str) -> list[Committed]:
        consumed: dict[int, list[str]] = {}
        for update_pk, aggregate_pk in ModelUpdate.objects.filter(
            experiment_id=int(experiment_id), aggregate__isnull=False
        ).values_list("pk", "aggregate_id"):
            consumed.setdefault(aggregate_pk, []).append(str(update_pk))
        return [
            Committed(
                aggregate_id=str(row.pk),
                round_number=row.round_number,
                parent_aggregate_id=str(row.parent_id) if row.parent_id is not None else None,
                update_ids=tuple(sorted(consumed.get(row.pk, []))),
                weights_key=row.weights_key,
                content_id=row.content_id,
            )
            for row in ModelAggregate.objects.filter(experiment_id=int(experiment_id))
            .order_by("round_number")
            .values_list("pk", "round_number", "parent_id", "weights_key", "content_id", named=True)
        ]

    def statuses(self, update_ids: Collection[str]) -> dict[str, tuple[str, str | None]]:
        rows = ModelUpdate.objects.filter(pk__in=[int(u) for u in update_ids]).values_list(
            "pk", "status", "aggregate_id", "status_reason"
        )
        return {
            str(pk): (status, str(aggregate) if aggregate is not None else (reason or None))
            for pk, status, aggregate, reason in rows
        }


@pytest.mark.parametrize("profile", profiles(fast_examples=60))
def test_the_round_contract_holds_on_django(profile: settings, developer: AbstractBaseUser) -> None:
    check_round_contract(lambda clock: DjangoRounds(clock, developer), profile)
