"""The interfaces the round engine needs, and the implementations that need no server."""

from fma_core.connectors.local import LocalDirectoryWeightStore
from fma_core.connectors.memory import InMemoryMetadataStore
from fma_core.connectors.metadata import (
    AggregateDraft,
    AggregateRecord,
    ExperimentConfig,
    MetadataStore,
    RoundClaim,
    UpdateRecord,
)
from fma_core.connectors.weight_store import (
    KEY_SPACES,
    ListedObject,
    ListedUpload,
    Removed,
    StoredObject,
    UploadedPart,
    WeightStore,
    check_key,
)

__all__ = [
    "KEY_SPACES",
    "AggregateDraft",
    "AggregateRecord",
    "ExperimentConfig",
    "InMemoryMetadataStore",
    "ListedObject",
    "ListedUpload",
    "LocalDirectoryWeightStore",
    "MetadataStore",
    "Removed",
    "RoundClaim",
    "StoredObject",
    "UpdateRecord",
    "UploadedPart",
    "WeightStore",
    "check_key",
]
