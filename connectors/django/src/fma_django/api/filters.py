"""Query filters, named as in the original v1 API (``?federated_model=``, ``?status=``, ...).

Integer filters are whole numbers within their column's range: anything else (``1e30``, a
21-digit id) is a 400 naming the filter, not a value handed to the database driver.
"""

import django_filters
from django import forms
from django.db.models import QuerySet

from fma_django.limits import MAX_BIGINT, MAX_INT, whole_number_range
from fma_django.models import Evaluation, EvaluationSource, Experiment, ModelAggregate, ModelUpdate


class WholeNumberFilter(django_filters.NumberFilter):
    """A whole number from ``min_value`` to ``max_value`` (default: an id, 1 to 2⁶³ − 1)."""

    field_class = forms.IntegerField

    def __init__(
        self, *args: object, min_value: int = 1, max_value: int = MAX_BIGINT, **kwargs: object
    ) -> None:
        message = whole_number_range(min_value, max_value)
        kwargs.setdefault("error_messages", {"invalid": message, "min_value": message, "max_value": message})
        super().__init__(*args, min_value=min_value, max_value=max_value, **kwargs)


class ExperimentFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    mine = django_filters.BooleanFilter(
        method="filter_mine",
        label="true: only the caller's own experiments (staff otherwise see everyone's); what `fma apply` matches",
    )

    class Meta:
        model = Experiment
        fields = ["allow_aggregation", "state", "legacy_mode", "open_enrollment"]

    def filter_mine(
        self, queryset: QuerySet[Experiment], name: str, value: bool | None
    ) -> QuerySet[Experiment]:
        return queryset.filter(developer_id=self.request.user.pk) if value else queryset


class ModelUpdateFilter(django_filters.FilterSet):
    federated_model = WholeNumberFilter(field_name="experiment_id")

    class Meta:
        model = ModelUpdate
        fields = ["status"]


class ModelAggregateFilter(django_filters.FilterSet):
    federated_model = WholeNumberFilter(field_name="experiment_id")
    round_number = WholeNumberFilter(min_value=0, max_value=MAX_INT)

    class Meta:
        model = ModelAggregate
        fields = ["round_number"]


class ClientAggregateScoreFilter(django_filters.FilterSet):
    aggregate = WholeNumberFilter(field_name="aggregate_id")
    client = django_filters.UUIDFilter(field_name="client__uuid")

    class Meta:
        model = Evaluation
        fields = []


class EvaluationFilter(django_filters.FilterSet):
    aggregate = WholeNumberFilter(field_name="aggregate_id")
    source = django_filters.ChoiceFilter(choices=EvaluationSource.choices)
    after = WholeNumberFilter(
        field_name="id", lookup_expr="gt", min_value=0, label="only evaluations with a greater id"
    )

    class Meta:
        model = Evaluation
        fields = []
