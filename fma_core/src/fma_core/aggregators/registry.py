"""Aggregation algorithms by name: the built-in ones, plus any a package adds through entry points.

A third party ships a subclass of ``Aggregator`` and declares it in its own ``pyproject.toml``::

    [project.entry-points."fma_core.aggregators"]
    geomed = "my_package.geomed:GeometricMedian"

and experiments can then use ``"aggregator": "geomed"`` without any change to fma-core.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from fma_core.aggregators.base import Aggregator
from fma_core.aggregators.bulyan import Bulyan
from fma_core.aggregators.fedadagrad import FedAdagrad
from fma_core.aggregators.fedadam import FedAdam
from fma_core.aggregators.fedavg import FedAvg
from fma_core.aggregators.fedavgm import FedAvgM
from fma_core.aggregators.fedyogi import FedYogi
from fma_core.aggregators.krum import Krum
from fma_core.aggregators.mean import Mean
from fma_core.aggregators.median import Median
from fma_core.aggregators.trimmed_mean import TrimmedMean
from fma_core.errors import ConfigurationError, UnknownAggregator

ENTRY_POINT_GROUP = "fma_core.aggregators"

BUILT_IN: Mapping[str, type[Aggregator]] = {
    "fedavg": FedAvg,
    "mean": Mean,
    "avg_values_if_data": Mean,
    "average_layers": Mean,
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "bulyan": Bulyan,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
}


@cache
def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Every name an experiment may use as its aggregator."""
    return sorted({*BUILT_IN, *_plugins()})


def aggregator_class(name: str) -> type[Aggregator]:
    if name in BUILT_IN:
        return BUILT_IN[name]
    plugin = _plugins().get(name)
    if plugin is None:
        raise UnknownAggregator(f"unknown aggregator {name!r}; available: {', '.join(available())}")
    cls = plugin.load()
    if not (isinstance(cls, type) and issubclass(cls, Aggregator)):
        raise ConfigurationError(f"entry point {name!r} ({plugin.value}) is not an Aggregator subclass")
    return cls


def create_aggregator(
    name: str, params: Mapping[str, Any] | None = None, *, threads: int | None = None
) -> Aggregator:
    """The algorithm registered as ``name``, with its parameters parsed and checked."""
    return aggregator_class(name)(params, threads=threads)
