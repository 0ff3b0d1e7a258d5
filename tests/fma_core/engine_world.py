"""A round engine over one experiment, for the tests of algorithms: an in-memory metadata store, a
local weight directory, an initial model, and clients that train from whichever model they are given
and push weights or deltas."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fma_core.connectors import ExperimentConfig, InMemoryMetadataStore, LocalDirectoryWeightStore
from fma_core.rounds import RoundEngine
from fma_core.weights import TensorSpec, load, to_bytes

CLIENTS = ("c0", "c1", "c2")


def random_weights(spec: TensorSpec, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Floating tensors of ``scale`` × standard normal values (float32), integer ones of small integers."""
    rng = np.random.default_rng(seed)
    return {
        t.name: rng.integers(-5, 5, t.shape).astype(t.numpy_dtype)
        if t.numpy_dtype.kind in "iu"
        else (scale * rng.standard_normal(t.shape)).astype(np.float32)
        for t in spec
    }


class Clock:
    now = 1_000.0

    def __call__(self) -> float:
        return self.now


class World:
    """Experiment "e" taking ``spec``; its initial model is ``random_weights(spec, 0)`` unless ``initial``
    is false (then it has none)."""

    def __init__(
        self,
        root: Path,
        spec: TensorSpec,
        *,
        aggregator: str,
        params: Mapping[str, Any] | None = None,
        delta: bool = False,
        initial: bool = True,
        update_norm: Mapping[str, Any] | None = None,
        asynchronous: Mapping[str, Any] | None = None,
        round_policy: Any = None,
        privacy: Mapping[str, Any] | None = None,
        privacy_secret: bytes | None = None,
    ) -> None:
        self.spec = spec
        self.initial = random_weights(spec, 0)
        self.weights = LocalDirectoryWeightStore(root)
        self.clock = Clock()
        self.metadata = InMemoryMetadataStore(clock=self.clock)
        initial_key = (
            self.weights.put("artifacts/initial.safetensors", io.BytesIO(to_bytes(self.initial))).key
            if initial
            else None
        )
        config = ExperimentConfig(
            "e",
            aggregator=aggregator,
            aggregator_params=dict(params or {}),
            tensor_spec=spec,
            update_norm=update_norm,
            asynchronous=asynchronous,
            round_policy=round_policy,
            privacy=privacy,
        )
        self.metadata.create_experiment(
            config, clients=CLIENTS, initial_weights_key=initial_key, privacy_secret=privacy_secret
        )
        self.delta = delta
        self.count = 0

    def model(self, round_number: int) -> dict[str, np.ndarray]:
        if round_number == 0:
            return self.initial
        return self.read(self.metadata.aggregates("e")[round_number - 1].draft.weights_key)

    def read(self, key: str) -> dict[str, np.ndarray]:
        with self.weights.open(key) as stream:
            return load(stream)

    def train(
        self, base_round: int, seed: int, num_examples: int, *, scale: float = 0.1
    ) -> dict[str, np.ndarray]:
        """A client's step (of ``scale`` times standard normal values) from round ``base_round``'s model,
        pushed as weights or as a delta; its change as the server sees it, in float64."""
        base = self.model(base_round)
        step = random_weights(self.spec, seed, scale=scale)
        trained = {name: base[name] + step[name] for name in base}
        self.count += 1
        sent = step if self.delta else trained
        stored = self.weights.put(f"updates/{self.count}.safetensors", io.BytesIO(to_bytes(sent)))
        self.metadata.add_update(
            "e",
            client_id=CLIENTS[self.count % 3],
            weights_key=stored.key,
            content_id=stored.sha256,
            num_examples=num_examples,
            base_round=base_round,
            delta=self.delta,
        )
        return {name: trained[name].astype(np.float64) - base[name] for name in base}

    def engine(self, **options: Any) -> RoundEngine:
        """A new engine, as after a restart: whatever state a round needs comes from the stores."""
        return RoundEngine(self.metadata, self.weights, worker_id="w", threads=2, **options)

    def run(self, **options: Any) -> None:
        outcome = self.engine(**options).run_round("e")
        assert outcome.status == "committed", outcome.reason
