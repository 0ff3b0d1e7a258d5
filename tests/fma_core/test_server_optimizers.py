"""The built-in server optimizers (fedavgm, fedadam, fedyogi, fedadagrad), run through the round engine
over several rounds with a stale update, as weights and as deltas, against a float64 numpy
implementation of Reddi et al.'s Algorithm 2 (and of Hsu et al.'s FedAvgM), and against Flower's
strategies where the two define the same thing."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fma_core.aggregators import UpdateInput, create_aggregator
from fma_core.aggregators.base import RoundContext, ServerState, Target, accumulator_dtype
from fma_core.errors import ConfigurationError
from fma_core.state import STATE_KEY
from fma_core.weights import ArrayReader, TensorSpec

from .engine_world import World as EngineWorld
from .engine_world import random_weights

SPEC = TensorSpec.from_json(
    [{"name": "w", "dtype": "F32", "shape": [48, 70]}, {"name": "b", "dtype": "F32", "shape": [70]}]
)
NAMES = ("w", "b")
INITIAL = random_weights(SPEC, 0)

# Parameters away from the defaults, so a parameter read under the wrong name would show.
PARAMS: dict[str, dict[str, float]] = {
    "fedavgm": {"server_learning_rate": 0.7, "momentum": 0.8},
    "fedadam": {"server_learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2},
    "fedyogi": {"server_learning_rate": 0.05, "beta_1": 0.7, "beta_2": 0.9, "tau": 1e-2},
    "fedadagrad": {"server_learning_rate": 0.05, "beta_1": 0.6, "tau": 1e-2},
}
STATE = {"fedavgm": ("momentum",), "fedadam": ("m", "v"), "fedyogi": ("m", "v"), "fedadagrad": ("m", "v")}


def World(root: Path, aggregator: str, params: Mapping[str, Any], *, delta: bool = False) -> EngineWorld:  # noqa: N802
    """The shared World on this SPEC."""
    return EngineWorld(root, SPEC, aggregator=aggregator, params=params, delta=delta)


def push(
    world: EngineWorld, base_round: int, *, seed: int, num_examples: int
) -> tuple[dict[str, np.ndarray], int]:
    """A client's update: its change from its base, and its weight."""
    return world.train(base_round, seed=seed, num_examples=num_examples), num_examples


def run_rounds(world: EngineWorld, rounds: int = 4, **engine_options: Any) -> list[list[tuple[dict, int]]]:
    """``rounds`` rounds of three clients; from the third on, one more client still on the model of two
    rounds before (a stale update)."""
    pushed = []
    for round_number in range(rounds):
        changes = [
            push(world, round_number, seed=10 * round_number + i, num_examples=i + 1) for i in range(3)
        ]
        if round_number >= 2:
            changes.append(push(world, round_number - 2, seed=100 + round_number, num_examples=5))
        world.run(**engine_options)
        pushed.append(changes)
    return pushed


def reference(aggregator: str, params: Mapping[str, float], rounds: Sequence[Sequence[tuple[dict, int]]]):
    """Each round's model and state, in float64: Hsu et al.'s FedAvgM, or Reddi et al.'s Algorithm 2
    with the m and v of its three variants, m and v starting at zero."""
    lr = params["server_learning_rate"]
    x = {k: v.astype(np.float64) for k, v in INITIAL.items()}
    state = {name: {k: np.zeros_like(v) for k, v in x.items()} for name in STATE[aggregator]}
    results = []
    for changes in rounds:
        total = sum(n for _, n in changes)
        for k in x:
            delta = sum(change[k] * (n / total) for change, n in changes)
            if aggregator == "fedavgm":
                state["momentum"][k] = params["momentum"] * state["momentum"][k] + delta
                x[k] = x[k] + lr * state["momentum"][k]
                continue
            beta_1 = params["beta_1"]
            m, v = state["m"], state["v"]
            m[k] = beta_1 * m[k] + (1 - beta_1) * delta
            if aggregator == "fedadagrad":
                v[k] = v[k] + delta**2
            elif aggregator == "fedadam":
                v[k] = params["beta_2"] * v[k] + (1 - params["beta_2"]) * delta**2
            else:  # fedyogi
                v[k] = v[k] - (1 - params["beta_2"]) * delta**2 * np.sign(v[k] - delta**2)
            x[k] = x[k] + lr * m[k] / (np.sqrt(v[k]) + params["tau"])
        results.append(({k: a.copy() for k, a in x.items()}, {n: dict(s) for n, s in state.items()}))
    return results


@pytest.mark.parametrize("delta", [False, True], ids=["weights", "deltas"])
@pytest.mark.parametrize("aggregator", list(PARAMS))
def test_each_round_matches_a_float64_reference_with_stale_updates(tmp_path, aggregator, delta):
    params = PARAMS[aggregator]
    world = World(tmp_path, aggregator, params, delta=delta)
    pushed = run_rounds(world)
    expected_rounds = reference(aggregator, params, pushed)
    for round_number, (aggregate, (model, state), changes) in enumerate(
        zip(world.metadata.aggregates("e"), expected_rounds, pushed, strict=True), start=1
    ):
        draft = aggregate.draft
        got = world.read(draft.weights_key)
        got_state = world.read(draft.state_key)
        for k in NAMES:
            assert got[k].dtype == np.float32
            np.testing.assert_allclose(got[k], model[k], rtol=1e-5, atol=1e-5)
            for name in STATE[aggregator]:
                np.testing.assert_allclose(got_state[f"{name}/{k}"], state[name][k], rtol=1e-4, atol=1e-6)
        with world.weights.open_weights(draft.state_key) as reader:
            described = json.loads(reader.metadata[STATE_KEY])
        assert described == {"algorithm": aggregator, "scalars": {"rounds": round_number}}
        # the lineage: each update's share of the pseudo-gradient is its share of the examples
        total = sum(n for _, n in changes)
        assert sorted(draft.input_weights) == pytest.approx(sorted(n / total for _, n in changes))
        assert (draft.aggregator, dict(draft.aggregator_params)) == (aggregator, params)


@pytest.mark.parametrize("aggregator", list(PARAMS))
def test_sharded_and_unsharded_rounds_are_bit_identical(tmp_path, aggregator):
    digests = []
    for shard_bytes in (None, SPEC.nbytes // 3):
        world = World(tmp_path / str(shard_bytes), aggregator, PARAMS[aggregator], delta=True)
        run_rounds(world, rounds=3, shard_bytes=shard_bytes)
        digests.append(
            [(a.draft.content_id, a.draft.state_content_id) for a in world.metadata.aggregates("e")]
        )
    assert digests[0] == digests[1]
    assert len({state for _, state in digests[0]}) == 3  # a new state each round


def test_with_no_momentum_and_a_unit_rate_fedavgm_is_fedavg(tmp_path):
    """A check of the pseudo-gradient's weighting on its own: x + Δ is the weighted mean of the
    updates when they all start from x."""
    world = World(tmp_path, "fedavgm", {"server_learning_rate": 1.0, "momentum": 0.0})
    changes = [push(world, 0, seed=i, num_examples=i + 1) for i in range(3)]
    world.run()
    got = world.read(world.metadata.aggregates("e")[0].draft.weights_key)
    for k in NAMES:
        mean = sum((INITIAL[k] + c[k]) * n for c, n in changes) / 6
        np.testing.assert_allclose(got[k], mean, rtol=1e-5, atol=1e-6)


def flower_rounds(strategy: Any, rounds: Sequence[Sequence[tuple[dict, int]]], eta=None) -> list[dict]:
    """Flower's models, round after round, each round's updates trained from Flower's current model
    (Flower has no stale updates); ``eta(t)`` sets the strategy's η before round t."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    current = [INITIAL[k] for k in NAMES]
    models = []
    for t, changes in enumerate(rounds, start=1):
        if eta is not None:
            strategy.eta = eta(t)
        results = [
            (
                None,
                FitRes(
                    Status(Code.OK, ""),
                    ndarrays_to_parameters(
                        [(current[i] + change[k]).astype(np.float32) for i, k in enumerate(NAMES)]
                    ),
                    n,
                    {},
                ),
            )
            for change, n in changes
        ]
        parameters, _ = strategy.aggregate_fit(t, results, [])
        current = parameters_to_ndarrays(parameters)
        models.append(dict(zip(NAMES, current, strict=True)))
    return models


def flower_strategy(aggregator: str, params: Mapping[str, float]) -> Any:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import strategy

    initial = ndarrays_to_parameters([INITIAL[k] for k in NAMES])
    lr = params["server_learning_rate"]
    if aggregator == "fedavgm":
        return strategy.FedAvgM(
            initial_parameters=initial, server_learning_rate=lr, server_momentum=params["momentum"]
        )
    if aggregator == "fedadagrad":
        return strategy.FedAdagrad(initial_parameters=initial, eta=lr, tau=params["tau"])
    cls = strategy.FedAdam if aggregator == "fedadam" else strategy.FedYogi
    return cls(
        initial_parameters=initial,
        eta=lr,
        beta_1=params["beta_1"],
        beta_2=params["beta_2"],
        tau=params["tau"],
    )


@pytest.mark.parametrize("aggregator", list(PARAMS))
def test_flower_computes_the_same_rounds_where_its_definitions_agree(tmp_path, aggregator):
    """Flower 1.42's FedAvgM and FedYogi compute the same update; its FedAdagrad is ours with β₁ = 0; its
    FedAdam multiplies η by √(1 − β₂ᵗ⁺¹)/(1 − β₁ᵗ⁺¹) in round t, so dividing its η by that gives ours."""
    pytest.importorskip("flwr")
    params = dict(PARAMS[aggregator])
    if aggregator == "fedadagrad":
        params["beta_1"] = 0.0
    world = World(tmp_path, aggregator, params)
    pushed = []
    for t in range(3):  # every update from the current model: what Flower assumes
        pushed.append([push(world, t, seed=10 * t + i, num_examples=i + 1) for i in range(3)])
        world.run()
    eta = None
    if aggregator == "fedadam":
        b1, b2, lr = params["beta_1"], params["beta_2"], params["server_learning_rate"]

        def eta(t: int) -> float:
            return lr * (1 - b1 ** (t + 1)) / np.sqrt(1 - b2 ** (t + 1))

    theirs = flower_rounds(flower_strategy(aggregator, params), pushed, eta)
    for aggregate, expected in zip(world.metadata.aggregates("e"), theirs, strict=True):
        ours = world.read(aggregate.draft.weights_key)
        for k in NAMES:
            np.testing.assert_allclose(ours[k], expected[k], rtol=1e-4, atol=1e-5)


def test_flowers_fedadam_takes_different_steps_from_the_papers(tmp_path):
    """The difference the docstring names is real: without the η correction, Flower's round 1 differs."""
    pytest.importorskip("flwr")
    params = PARAMS["fedadam"]
    world = World(tmp_path, "fedadam", params)
    pushed = [[push(world, 0, seed=i, num_examples=i + 1) for i in range(3)]]
    world.run()
    theirs = flower_rounds(flower_strategy("fedadam", params), pushed)[0]
    ours = world.read(world.metadata.aggregates("e")[0].draft.weights_key)
    factor = np.sqrt(1 - params["beta_2"] ** 2) / (1 - params["beta_1"] ** 2)
    np.testing.assert_allclose(
        theirs["w"] - INITIAL["w"], factor * (ours["w"] - INITIAL["w"]), rtol=1e-3, atol=1e-6
    )
    assert not np.allclose(theirs["w"], ours["w"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("aggregator", "params", "says"),
    [
        ("fedavgm", {"momentum": 1.0}, "'momentum' must be in [0, 1), not 1.0"),
        ("fedavgm", {"momentum": -0.1}, "'momentum' must be in [0, 1)"),
        ("fedavgm", {"server_learning_rate": 0}, "'server_learning_rate' must be in (0, ∞), not 0.0"),
        ("fedadam", {"beta_1": 1.2}, "'beta_1' must be in [0, 1)"),
        ("fedadam", {"beta_2": 1.0}, "'beta_2' must be in [0, 1)"),
        ("fedadam", {"tau": -1e-3}, "'tau' must be in (0, ∞)"),
        (
            "fedadam",
            {"server_learning_rate": float("inf")},
            "'server_learning_rate' must be in (0, ∞), not inf",
        ),
        ("fedyogi", {"beta_2": -0.5}, "'beta_2' must be in [0, 1)"),
        ("fedyogi", {"tau": 0.0}, "'tau' must be in (0, ∞)"),
        ("fedadagrad", {"beta_1": 1.0}, "'beta_1' must be in [0, 1)"),
        ("fedadagrad", {"beta_2": 0.9}, "unknown parameter(s) beta_2"),
        ("fedadam", {"beta_1": "0.9"}, "must be a float"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter_and_its_range(aggregator, params, says):
    with pytest.raises(ConfigurationError) as refused:
        create_aggregator(aggregator, params)
    assert says in str(refused.value)


@pytest.mark.parametrize("aggregator", list(PARAMS))
def test_the_range_edges_that_are_allowed_are_accepted(aggregator):
    edges = {"momentum": 0.0, "beta_1": 0.0, "beta_2": 0.0, "server_learning_rate": 1e-12, "tau": 1e-12}
    params = {name: edges[name] for name in PARAMS[aggregator]}
    assert create_aggregator(aggregator, params).params.to_dict() == params


def step_directly(
    name: str, changes: Sequence[dict[str, np.ndarray]], *, threads: int, block: int, order: Sequence[int]
) -> dict[str, bytes]:
    """One round of ``name`` called directly (no engine), over tensors of three dtypes, with last round's
    state: every output's and new state tensor's bytes."""
    parent = {k: (v + 1).astype(v.dtype) for k, v in changes[0].items()}
    rng = np.random.default_rng(7)
    state_names = STATE[name]
    previous = {
        f"{s}/{k}": np.abs(rng.standard_normal(v.shape)).astype(accumulator_dtype(v.dtype))
        for s in state_names
        for k, v in parent.items()
    }
    context = RoundContext(
        round_number=2,
        parent=lambda: ArrayReader(parent),
        state=ServerState(name, {"rounds": 1}, lambda: ArrayReader(previous)),
    )
    inputs = [
        UpdateInput(f"u{i}", f"{i:04d}", i + 1, lambda c=c: ArrayReader(c), lambda c=c: ArrayReader(c))
        for i, c in enumerate(changes)
    ]
    aggregator = create_aggregator(name, PARAMS[name], threads=threads)
    aggregator.block_elements = block
    spec = TensorSpec.from_weights(parent)
    outs = {info.name: np.empty(info.size, info.numpy_dtype) for info in spec}
    states = {
        f"{s}/{info.name}": np.empty(info.size, accumulator_dtype(info.numpy_dtype))
        for s in state_names
        for info in spec
    }
    targets = [
        Target(info, 0, info.size, outs[info.name], {s: states[f"{s}/{info.name}"] for s in state_names})
        for info in spec
    ]
    aggregator.aggregate_into([inputs[i] for i in order], targets, context)
    assert {k: v.dtype for k, v in outs.items()} == {k: v.dtype for k, v in parent.items()}
    return {k: v.tobytes() for k, v in {**outs, **states}.items()}


@pytest.mark.parametrize("aggregator", list(PARAMS))
def test_any_order_threads_and_blocks_give_identical_bits_in_every_dtype(aggregator):
    rng = np.random.default_rng(11)
    changes = [
        {
            "h": rng.standard_normal(3000).astype(np.float16),
            "w": rng.standard_normal((50, 60)).astype(np.float32),
            "d": rng.standard_normal(700),
        }
        for _ in range(5)
    ]
    baseline = step_directly(aggregator, changes, threads=1, block=1 << 18, order=range(5))
    for threads, block, order in [(2, 1 << 10, [4, 2, 0, 1, 3]), (3, 999, [1, 0, 3, 2, 4])]:
        assert step_directly(aggregator, changes, threads=threads, block=block, order=order) == baseline
