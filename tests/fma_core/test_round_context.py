"""The round context: the parent model, each update's change from its own base, server state kept from
round to round, and a prepare pass run once per round; a third party's stateful strategy in one file."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from fma_core.aggregators import LinearAggregator, UpdateInput, registry
from fma_core.aggregators.base import RoundContext, blocks
from fma_core.shards import RoundPlan
from fma_core.state import STATE_KEY
from fma_core.weights import TensorSpec, content_id, open_weights, to_bytes

from .engine_world import World as EngineWorld
from .engine_world import random_weights

SPEC = TensorSpec.from_json(
    [{"name": "w", "dtype": "F32", "shape": [64, 80]}, {"name": "b", "dtype": "F32", "shape": [80]}]
)
INITIAL = random_weights(SPEC, 0)


def weights(seed: int) -> dict[str, np.ndarray]:
    return random_weights(SPEC, seed)


def World(root: Path, **options: Any) -> EngineWorld:  # noqa: N802 - the shared World, on this SPEC
    return EngineWorld(root, SPEC, **{"aggregator": "server_momentum", **options})


def momentum_reference(rounds: Sequence[Sequence[tuple[dict, int]]], *, lr: float, beta: float) -> list[dict]:
    """Server momentum in float64 numpy: m ← β·m + Σ wᵢ·changeᵢ, x ← x + η·m, per round."""
    x = {k: v.astype(np.float64) for k, v in INITIAL.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    models = []
    for changes in rounds:
        total = sum(n for _, n in changes)
        for k in x:
            step = sum(change[k].astype(np.float64) * n / total for change, n in changes)
            m[k] = beta * m[k] + step
            x[k] = x[k] + lr * m[k]
        models.append({k: (x[k].copy(), m[k].copy()) for k in x})
    return models


def run_momentum_rounds(world: EngineWorld, **engine_options: Any) -> list[list[tuple[dict, int]]]:
    """Three rounds; in the third, one client is still on round 1's model (a stale update)."""
    pushed = []
    for round_number in range(3):
        changes = [
            (world.train(round_number, seed=10 * round_number + i, num_examples=i + 1), i + 1)
            for i in range(3)
        ]
        if round_number == 2:
            changes.append((world.train(1, seed=99, num_examples=5), 5))
        world.run(**engine_options)  # a new engine each round: a restart
        pushed.append(changes)
    return pushed


@pytest.mark.parametrize("delta", [False, True], ids=["weights", "deltas"])
def test_a_third_party_stateful_strategy_matches_its_reference_over_rounds(tmp_path, plugin, delta):
    params = {"server_learning_rate": 0.5, "momentum": 0.9}
    world = World(tmp_path, params=params, delta=delta)
    pushed = run_momentum_rounds(world)
    reference = momentum_reference(pushed, lr=0.5, beta=0.9)
    for round_number, (aggregate, expected) in enumerate(
        zip(world.metadata.aggregates("e"), reference, strict=True), start=1
    ):
        draft = aggregate.draft
        model = world.read(draft.weights_key)
        state = world.read(draft.state_key)
        for name in ("w", "b"):
            np.testing.assert_allclose(model[name], expected[name][0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(state[f"momentum/{name}"], expected[name][1], rtol=1e-5, atol=1e-5)
        with world.weights.open(draft.state_key) as stream:
            assert content_id(stream.read()) == draft.state_content_id  # the lineage names the state's hash
        with world.weights.open_weights(draft.state_key) as reader:
            scalars = json.loads(reader.metadata[STATE_KEY])
        assert scalars == {"algorithm": "server_momentum", "scalars": {"rounds": round_number}}
        assert (draft.aggregator, dict(draft.aggregator_params)) == ("server_momentum", params)


def test_sharded_and_unsharded_stateful_rounds_are_bit_identical(tmp_path, plugin):
    whole = World(tmp_path / "whole")
    run_momentum_rounds(whole)
    sharded = World(tmp_path / "sharded")
    run_momentum_rounds(sharded, shard_bytes=SPEC.nbytes // 3)
    for a, b in zip(whole.metadata.aggregates("e"), sharded.metadata.aggregates("e"), strict=True):
        assert a.draft.content_id == b.draft.content_id
        assert a.draft.state_content_id == b.draft.state_content_id
    leftovers = [p for p in (tmp_path / "sharded").rglob("*") if p.is_file() and "shards" in p.parts]
    assert leftovers == []


def test_each_shard_of_a_travelling_plan_reads_the_same_state(tmp_path, plugin):
    """Shards computed by different workers from the plan as JSON (a Celery task, a Lambda event)."""
    world = World(tmp_path)
    run_momentum_rounds(world)
    whole = World(tmp_path / "whole")
    run_momentum_rounds(whole)
    for i in range(3):
        world.train(3, seed=40 + i, num_examples=1)
        whole.train(3, seed=40 + i, num_examples=1)
    plan = world.engine(shard_bytes=SPEC.nbytes // 3).start_round("e")
    assert isinstance(plan, RoundPlan)
    assert len(plan.shards) >= 3
    assert plan.claim.parent_state_key == world.metadata.aggregates("e")[-1].draft.state_key
    outcomes = [
        world.engine().finish_shard(RoundPlan.from_dict(json.loads(json.dumps(plan.to_dict()))), index)
        for index in reversed(range(len(plan.shards)))
    ]
    assert outcomes[-1].status == "committed"
    expected = whole.engine().run_round("e").aggregate.draft
    assert outcomes[-1].aggregate.draft.content_id == expected.content_id
    assert outcomes[-1].aggregate.draft.state_content_id == expected.state_content_id


def test_an_algorithm_that_needs_the_current_model_says_so_when_there_is_none(tmp_path, plugin):
    world = World(tmp_path, initial=False)
    for i in range(3):
        world.count += 1
        stored = world.weights.put(f"updates/{i}.safetensors", io.BytesIO(to_bytes(weights(i))))
        world.metadata.add_update(
            "e", client_id="c0", weights_key=stored.key, content_id=stored.sha256, num_examples=1
        )
    outcome = world.engine().run_round("e")
    assert outcome.status == "failed"
    assert "needs the current global model" in outcome.reason
    assert "initial model" in outcome.reason
    assert len(world.metadata.pending_updates("e")) == 3  # nothing consumed, nothing quarantined


class InverseNorm(LinearAggregator):
    """Weighs each update by 1 / ‖change‖, the norms found by a prepare pass over all updates."""

    name = "inverse_norm"
    reads_changes = True
    prepared: ClassVar[list[Any]] = []  # every prepare call's result, in this process

    def prepare(self, updates: Sequence[UpdateInput], spec: TensorSpec, context: RoundContext) -> Any:
        squares = np.zeros(len(updates))
        for _, values in blocks(updates, spec, changes=True):
            squares += [float(np.dot(v.astype(np.float64), v)) for v in values]
        result = {"norms": np.sqrt(squares).tolist(), "round": context.round_number}
        InverseNorm.prepared.append(result)
        return result

    def coefficients(self, updates: Sequence[UpdateInput]) -> np.ndarray:
        raise AssertionError("the round's coefficients come from its prepare pass")

    def input_weights(self, updates: Sequence[UpdateInput]) -> list[float] | None:
        return None

    def _plan(self, updates: Sequence[UpdateInput], context: RoundContext) -> np.ndarray:
        inverse = 1 / np.asarray(context.prepared["norms"])
        return inverse / inverse.sum()

    def report(self, updates: Sequence[UpdateInput], context: RoundContext) -> dict[str, Any]:
        return {"norms": {u.update_id: n for u, n in zip(updates, context.prepared["norms"], strict=True)}}


@pytest.fixture
def inverse_norm(monkeypatch):
    monkeypatch.setitem(registry.BUILT_IN, "inverse_norm", InverseNorm)
    InverseNorm.prepared.clear()
    return InverseNorm


@pytest.mark.parametrize("shard_bytes", [None, SPEC.nbytes // 3], ids=["whole", "sharded"])
def test_the_prepare_pass_runs_once_per_round_and_every_shard_sees_its_result(
    tmp_path, inverse_norm, shard_bytes
):
    world = World(tmp_path, aggregator="inverse_norm")
    trained = []
    for i in range(4):
        change = world.train(0, seed=i, num_examples=1)
        trained.append({name: INITIAL[name] + change[name] for name in change})
    outcome = world.engine(shard_bytes=shard_bytes).run_round("e")
    assert outcome.status == "committed"
    assert len(inverse_norm.prepared) == 1  # once per round, not once per shard
    assert inverse_norm.prepared[0]["round"] == 1
    # the prepare pass saw the updates in canonical order: recompute the norms in that order
    ordered = sorted(world.metadata.aggregates("e")[0].draft.update_ids)
    assert len(ordered) == 4
    norms = np.asarray(inverse_norm.prepared[0]["norms"])
    coefficients = (1 / norms) / (1 / norms).sum()
    expected_norms = sorted(
        np.sqrt(sum(float(np.sum((t[k].astype(np.float64) - INITIAL[k]) ** 2)) for k in t)) for t in trained
    )
    np.testing.assert_allclose(sorted(norms), expected_norms, rtol=1e-5)
    result = world.read(outcome.aggregate.draft.weights_key)
    by_norm = {round(float(n), 6): c for n, c in zip(norms, coefficients, strict=True)}
    expected = {
        k: sum(
            by_norm[
                round(float(np.sqrt(sum(np.sum((t[j].astype(np.float64) - INITIAL[j]) ** 2) for j in t))), 6)
            ]
            * (t[k] - INITIAL[k])
            for t in trained
        )
        for k in ("w", "b")
    }
    for k in ("w", "b"):
        np.testing.assert_allclose(result[k], expected[k], rtol=1e-4, atol=1e-6)
    # what the algorithm decided is in the aggregate's lineage, each update by its id
    report = outcome.aggregate.draft.report["aggregator"]
    canonical = outcome.aggregate.draft.update_ids
    assert report == {"norms": dict(zip(canonical, inverse_norm.prepared[0]["norms"], strict=True))}


def test_the_prepare_pass_gives_the_same_aggregate_sharded_or_not(tmp_path, inverse_norm):
    digests = []
    for shard_bytes in (None, SPEC.nbytes // 3):
        world = World(tmp_path / str(shard_bytes), aggregator="inverse_norm")
        for i in range(4):
            world.train(0, seed=i, num_examples=1)
        digests.append(world.engine(shard_bytes=shard_bytes).run_round("e").aggregate.draft.content_id)
    assert digests[0] == digests[1]


def test_a_prepare_pass_that_returns_more_than_json_is_refused_clearly(tmp_path, monkeypatch):
    class NotJson(InverseNorm):
        name = "not_json"

        def prepare(self, updates, spec, context):
            return {"norms": np.ones(len(updates))}  # a numpy array: not plain JSON

    monkeypatch.setitem(registry.BUILT_IN, "not_json", NotJson)
    world = World(tmp_path, aggregator="not_json")
    world.train(0, seed=1, num_examples=1)
    outcome = world.engine().run_round("e")
    assert outcome.status == "failed"
    assert "prepare must return plain JSON" in outcome.reason


def test_a_report_that_is_more_than_json_fails_the_round_clearly(tmp_path, monkeypatch):
    class ReportsNumpy(InverseNorm):
        name = "reports_numpy"

        def report(self, updates, context):
            return {"norms": np.asarray(context.prepared["norms"])}

    monkeypatch.setitem(registry.BUILT_IN, "reports_numpy", ReportsNumpy)
    world = World(tmp_path, aggregator="reports_numpy")
    world.train(0, seed=1, num_examples=1)
    outcome = world.engine().run_round("e")
    assert outcome.status == "failed"
    assert "report must return plain JSON" in outcome.reason
    assert world.metadata.aggregates("e") == []


def test_stateless_rounds_leave_no_state(tmp_path):
    world = World(tmp_path, aggregator="fedavg")
    world.train(0, seed=1, num_examples=1)
    draft = world.engine().run_round("e").aggregate.draft
    assert (draft.state_key, draft.state_content_id) == (None, None)
    with open_weights(tmp_path / draft.weights_key) as reader:
        assert STATE_KEY not in reader.metadata
