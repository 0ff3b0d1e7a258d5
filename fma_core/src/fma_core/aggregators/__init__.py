"""Aggregation algorithms, one module each, streaming updates block by block."""

from fma_core.aggregators.base import (
    Aggregator,
    AggregatorParams,
    CoordinateWiseAggregator,
    LinearAggregator,
    NoParams,
    UpdateInput,
    canonical_order,
)
from fma_core.aggregators.registry import ENTRY_POINT_GROUP, aggregator_class, available, create_aggregator

__all__ = [
    "ENTRY_POINT_GROUP",
    "Aggregator",
    "AggregatorParams",
    "CoordinateWiseAggregator",
    "LinearAggregator",
    "NoParams",
    "UpdateInput",
    "aggregator_class",
    "available",
    "canonical_order",
    "create_aggregator",
]
