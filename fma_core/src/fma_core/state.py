"""Server state: what a stateful algorithm (server momentum, Adam's moments, an adaptive bound) keeps
from one round to the next, stored as one safetensors file next to the aggregate.

The file holds, for each of the algorithm's ``state_tensors`` in turn, one tensor per model tensor
(named ``"<state tensor>/<model tensor>"``, shaped like it, in its accumulator dtype), and in its
metadata the algorithm's name and the state's scalars. Its data is laid out state tensor by state
tensor, each in the model's order, so a shard's element ranges are contiguous within each state
tensor: a sharded round writes its state as a multipart upload with one part per (state tensor,
shard), and the file is bit-identical to the one an unsharded round writes.

The aggregate's record names the file and its SHA-256 (its lineage); the next round's claim names
it again (``RoundClaim.parent_state_key``), so whichever worker, process or Lambda runs that round,
after whatever restart, continues from exactly this state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

from fma_core.aggregators.base import ServerState, accumulator_dtype
from fma_core.errors import InvalidWeights
from fma_core.weights import TensorSpec, WeightsReader
from fma_core.weights.format import TensorInfo, dtype_code
from fma_core.weights.layout import header_bytes

STATE_KEY = "fma.state"  # the metadata entry holding {"algorithm": ..., "scalars": {...}}


def state_spec(spec: TensorSpec, names: Sequence[str]) -> TensorSpec:
    """The state file's tensors: for each state tensor name, one tensor per model tensor."""
    return TensorSpec(
        tuple(
            TensorInfo(f"{name}/{info.name}", dtype_code(accumulator_dtype(info.numpy_dtype)), info.shape)
            for name in names
            for info in spec
        )
    )


def state_header(
    spec: TensorSpec, names: Sequence[str], *, algorithm: str, scalars: Mapping[str, float]
) -> bytes:
    """The state file's header: its tensors and, in the metadata, the algorithm and the scalars."""
    described = json.dumps({"algorithm": algorithm, "scalars": dict(scalars)}, sort_keys=True)
    return header_bytes(state_spec(spec, names), metadata={STATE_KEY: described})


def read_state(key: str, open_weights: Callable[[str], WeightsReader]) -> ServerState:
    """The state stored at ``key``: its header read now, its tensors opened again by each reader."""
    with open_weights(key) as reader:
        raw = (getattr(reader, "metadata", None) or {}).get(STATE_KEY)
    try:
        described = json.loads(raw)
        algorithm, scalars = str(described["algorithm"]), dict(described["scalars"])
    except (TypeError, ValueError, KeyError) as error:
        raise InvalidWeights(f"{key} is not a server state file: {error}") from None
    return ServerState(algorithm=algorithm, scalars=scalars, open=lambda: open_weights(key))


def state_key(experiment_id: str, round_number: int, token: str) -> str:
    """Where a claim writes the state its round leaves, beside its aggregate."""
    return f"aggregates/{experiment_id}/r{round_number}-{token}.state.safetensors"
