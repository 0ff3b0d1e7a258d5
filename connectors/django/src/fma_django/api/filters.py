"""Query filters, named as in the original v1 API (``?federated_model=``, ``?status=``, ...)."""

import django_filters

from fma_django.models import ClientAggregateScore, Experiment, ModelAggregate, ModelUpdate


class ExperimentFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Experiment
        fields = ["allow_aggregation", "legacy_mode", "open_enrollment"]


class ModelUpdateFilter(django_filters.FilterSet):
    federated_model = django_filters.NumberFilter(field_name="experiment_id")

    class Meta:
        model = ModelUpdate
        fields = ["status"]


class ModelAggregateFilter(django_filters.FilterSet):
    federated_model = django_filters.NumberFilter(field_name="experiment_id")

    class Meta:
        model = ModelAggregate
        fields = ["round_number"]


class ClientAggregateScoreFilter(django_filters.FilterSet):
    aggregate = django_filters.NumberFilter(field_name="aggregate_id")
    client = django_filters.UUIDFilter(field_name="client__uuid")

    class Meta:
        model = ClientAggregateScore
        fields = []
