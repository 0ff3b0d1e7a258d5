"""Asynchronous (buffered) rounds: the staleness functions against hand-computed values, the setting's
refusals, and rounds through the engine against a float64 numpy computation of FedBuff's step with
stale bases, a server learning rate, and a server optimizer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fma_core.asynchronous import (
    AsyncMode,
    Staleness,
    check_aggregator,
    check_round_policy,
    effective_policy,
    staleness_of,
)
from fma_core.errors import ConfigurationError
from fma_core.policies import PendingUpdate, RoundState
from fma_core.weights import TensorSpec

from .engine_world import World

SPEC = TensorSpec.from_json(
    [{"name": "w", "dtype": "F32", "shape": [30, 20]}, {"name": "b", "dtype": "F32", "shape": [20]}]
)


@pytest.mark.parametrize(
    ("config", "tau", "expected"),
    [
        ({"function": "constant"}, 0, 1.0),
        ({"function": "constant"}, 7, 1.0),
        ({"function": "fedbuff"}, 0, 1.0),
        ({"function": "fedbuff"}, 3, 0.5),  # 1/√4
        ({"function": "fedbuff"}, 8, 1 / 3),  # 1/√9
        ({"function": "polynomial", "a": 0.5}, 3, 0.5),  # 4^-0.5
        ({"function": "polynomial", "a": 2}, 1, 0.25),  # 2^-2
        ({"function": "polynomial", "a": 1}, 9, 0.1),  # 10^-1
        ({"function": "hinge", "a": 10, "b": 4}, 0, 1.0),
        ({"function": "hinge", "a": 10, "b": 4}, 4, 1.0),  # τ ≤ b
        ({"function": "hinge", "a": 10, "b": 4}, 5, 1 / 11),  # 1/(10·1 + 1)
        ({"function": "hinge", "a": 10, "b": 4}, 6, 1 / 21),  # 1/(10·2 + 1)
        ({"function": "hinge", "a": 0.5, "b": 0}, 2, 0.5),  # 1/(0.5·2 + 1)
    ],
)
def test_staleness_functions_give_the_hand_computed_values(config, tau, expected):
    assert Staleness.from_config(config)(tau) == pytest.approx(expected, rel=1e-15)


def test_the_default_staleness_is_fedbuffs_and_a_name_alone_is_accepted():
    assert AsyncMode.from_config({"buffer": 2}).staleness(3) == 0.5
    assert Staleness.from_config("constant")(5) == 1.0


def test_staleness_is_the_versions_the_model_moved_on_since_the_base():
    assert staleness_of(1, 0) == 0  # round 1 from the initial model
    assert staleness_of(5, 4) == 0
    assert staleness_of(5, 1) == 3


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({}, "asynchronous.buffer"),
        ({"buffer": 0}, "asynchronous.buffer"),
        ({"buffer": 2.5}, "asynchronous.buffer"),
        ({"buffer": True}, "asynchronous.buffer"),
        ({"buffer": 2, "k": 1}, "unknown setting(s) k"),
        ({"buffer": 2, "staleness": {"function": "exp"}}, "unknown function 'exp'"),
        ({"buffer": 2, "staleness": {"function": "polynomial"}}, "'polynomial' needs a"),
        ({"buffer": 2, "staleness": {"function": "polynomial", "a": 0}}, "'a' must be above 0"),
        ({"buffer": 2, "staleness": {"function": "hinge", "a": 1, "b": -1}}, "'b' must be at least 0"),
        ({"buffer": 2, "staleness": {"function": "fedbuff", "a": 1}}, "does not take a"),
        ({"buffer": 2, "staleness": {"function": "hinge", "a": "1", "b": 0}}, "'a' must be a number"),
        ({"buffer": 2, "staleness": {"function": "hinge", "a": math.nan, "b": 0}}, "'a' must be a number"),
        ({"buffer": 2, "max_staleness": -1}, "max_staleness"),
        ({"buffer": 2, "server_learning_rate": 0}, "server_learning_rate must be above 0"),
        ([2], "asynchronous is an object"),
    ],
)
def test_bad_settings_are_refused_naming_what_is_wrong(config, says):
    with pytest.raises(ConfigurationError) as refused:
        AsyncMode.from_config(config)
    assert says in str(refused.value)


def test_the_setting_reads_back_as_written():
    config = {
        "buffer": 4,
        "staleness": {"function": "hinge", "a": 10.0, "b": 4.0},
        "max_staleness": 6,
        "server_learning_rate": 0.5,
    }
    assert AsyncMode.from_config(config).to_config() == config


@pytest.mark.parametrize(
    "policy",
    ["all_clients", {"policy": "min_fraction", "fraction": 0.5}, {"policy": "require_x_updates", "x": 3}],
)
def test_round_policies_that_wait_for_clients_or_count_updates_are_refused(policy):
    with pytest.raises(ConfigurationError, match=r"closes a round every asynchronous\.buffer"):
        check_round_policy(policy)


def test_a_deadline_closes_a_round_before_the_buffer_is_full():
    check_round_policy({"policy": "deadline", "seconds": 60})
    policy = effective_policy({"policy": "deadline", "seconds": 60}, {"buffer": 3})
    early = RoundState((PendingUpdate("a", 0.0),), frozenset({"a", "b"}), now=10.0)
    late = RoundState((PendingUpdate("a", 0.0),), frozenset({"a", "b"}), now=60.0)
    full = RoundState(tuple(PendingUpdate(c, 0.0) for c in "abc"), frozenset("abc"), now=1.0)
    assert (policy.is_ready(early), policy.is_ready(late), policy.is_ready(full)) == (False, True, True)
    assert not effective_policy(None, {"buffer": 3}).is_ready(early)


@pytest.mark.parametrize("aggregator", ["krum", "bulyan", "median", "trimmed_mean", "some_plugin"])
def test_aggregators_that_compare_whole_models_are_refused(aggregator):
    with pytest.raises(ConfigurationError, match="cannot run asynchronous rounds"):
        check_aggregator(aggregator, AsyncMode(buffer=3))


def test_a_server_optimizer_keeps_its_own_learning_rate():
    check_aggregator("fedadam", AsyncMode(buffer=3))
    check_aggregator("fedavg", AsyncMode(buffer=3, server_learning_rate=0.5))
    with pytest.raises(ConfigurationError, match="takes its own server_learning_rate"):
        check_aggregator("fedadam", AsyncMode(buffer=3, server_learning_rate=0.5))


# Rounds through the engine


def push(world: World, base_round: int, seed: int, n: int) -> tuple[dict, int, int]:
    """A client's update from round ``base_round``'s model, a moment after the last one."""
    world.clock.now += 1
    return world.train(base_round, seed=seed, num_examples=n), n, base_round


def as64(weights: dict) -> dict:
    return {k: v.astype(np.float64) for k, v in weights.items()}


def discounted_mean(changes, round_number: int, s: Staleness, *, weighted: bool = True) -> dict:
    """Σ nᵢ·s(τᵢ)·Δᵢ / Σ nᵢ, in float64."""
    counts = [n if weighted else 1 for _, n, _ in changes]
    total = sum(counts)
    return {
        k: sum(
            change[k] * (count * s(round_number - 1 - base) / total)
            for (change, _, base), count in zip(changes, counts, strict=True)
        )
        for k in ("w", "b")
    }


@pytest.mark.parametrize("delta", [False, True], ids=["weights", "deltas"])
def test_buffered_rounds_match_fedbuffs_step_with_stale_bases_and_a_server_learning_rate(tmp_path, delta):
    setting = {"buffer": 3, "staleness": {"function": "polynomial", "a": 0.5}, "server_learning_rate": 0.7}
    s = Staleness.from_config(setting["staleness"])
    world = World(tmp_path, SPEC, aggregator="fedavg", delta=delta, asynchronous=setting)
    x = as64(world.initial)
    rounds = [
        [push(world, 0, 1, 10), push(world, 0, 2, 30), push(world, 0, 3, 20)],  # all fresh
    ]
    world.run()
    mean = discounted_mean(rounds[0], 1, s)
    x = {k: x[k] + 0.7 * mean[k] for k in x}
    # round 2: one fresh update, two trained on the initial model (τ = 1); two more arrive later and wait
    second = [push(world, 1, 4, 5), push(world, 0, 5, 15), push(world, 0, 6, 40)]
    later = [push(world, 1, 7, 8), push(world, 0, 8, 9)]
    world.run()
    mean = discounted_mean(second, 2, s)
    x = {k: x[k] + 0.7 * mean[k] for k in x}
    aggregates = world.metadata.aggregates("e")
    got = world.read(aggregates[1].draft.weights_key)
    for k in x:
        np.testing.assert_allclose(got[k], x[k], rtol=1e-5, atol=1e-5)
    assert len(aggregates[1].draft.update_ids) == 3
    assert len(world.metadata.pending_updates("e")) == 2  # the buffer took the three oldest
    draft = aggregates[1].draft
    # the lineage: each update's share is nᵢ·s(τᵢ)/Σ nᵢ
    assert sorted(draft.input_weights) == pytest.approx(sorted([5 / 60, 15 / 60 * s(1), 40 / 60 * s(1)]))
    staleness = draft.report["staleness"]
    assert staleness["mix"] == {"0": 1, "1": 2}
    pairs = sorted((u["tau"], u["discount"]) for u in staleness["updates"].values())
    assert [tau for tau, _ in pairs] == [0, 1, 1]
    assert [weight for _, weight in pairs] == pytest.approx([1.0, 2**-0.5, 2**-0.5])
    assert set(staleness["updates"]) == set(draft.update_ids)
    assert staleness["function"] == {"function": "polynomial", "a": 0.5}
    # the two that waited are not enough for a round of three; one more makes one, the τ counted then
    assert world.engine().run_round("e").status == "not_ready"
    third = [*later, push(world, 2, 9, 12)]
    world.run()
    mean = discounted_mean(third, 3, s)
    x = {k: x[k] + 0.7 * mean[k] for k in x}
    got = world.read(world.metadata.aggregates("e")[2].draft.weights_key)
    for k in x:
        np.testing.assert_allclose(got[k], x[k], rtol=1e-5, atol=1e-5)
    assert world.metadata.aggregates("e")[2].draft.report["staleness"]["mix"] == {"0": 1, "1": 1, "2": 1}


def test_mean_gives_every_update_an_equal_share_before_its_discount(tmp_path):
    setting = {"buffer": 2, "staleness": {"function": "hinge", "a": 1, "b": 0}}
    s = Staleness.from_config(setting["staleness"])
    world = World(tmp_path, SPEC, aggregator="mean", asynchronous=setting)
    first = [push(world, 0, 1, 10), push(world, 0, 2, 30)]
    world.run()
    second = [push(world, 1, 3, 7), push(world, 0, 4, 70)]
    world.run()
    x = as64(world.initial)
    for number, changes in enumerate((first, second), start=1):
        mean = discounted_mean(changes, number, s, weighted=False)
        x = {k: x[k] + mean[k] for k in x}  # the default server learning rate is 1
    got = world.read(world.metadata.aggregates("e")[1].draft.weights_key)
    for k in x:
        np.testing.assert_allclose(got[k], x[k], rtol=1e-5, atol=1e-5)


def test_a_server_optimizer_steps_from_the_discounted_mean_change(tmp_path):
    params = {"server_learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2}
    setting = {"buffer": 2, "staleness": {"function": "fedbuff"}}
    s = Staleness.from_config(setting["staleness"])
    world = World(tmp_path, SPEC, aggregator="fedadam", params=params, asynchronous=setting)
    rounds = []
    rounds.append([push(world, 0, 1, 10), push(world, 0, 2, 30)])
    world.run()
    rounds.append([push(world, 0, 3, 10), push(world, 1, 4, 20)])
    world.run()
    rounds.append([push(world, 0, 5, 25), push(world, 2, 6, 5)])
    world.run()
    x = as64(world.initial)
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.zeros_like(a) for k, a in x.items()}
    for number, changes in enumerate(rounds, start=1):
        delta = discounted_mean(changes, number, s)
        for k in x:
            m[k] = 0.8 * m[k] + 0.2 * delta[k]
            v[k] = 0.95 * v[k] + 0.05 * delta[k] ** 2
            x[k] = x[k] + 0.05 * m[k] / (np.sqrt(v[k]) + 1e-2)
    aggregates = world.metadata.aggregates("e")
    got = world.read(aggregates[2].draft.weights_key)
    for k in x:
        np.testing.assert_allclose(got[k], x[k], rtol=1e-4, atol=1e-5)
    assert aggregates[2].draft.report["staleness"]["mix"] == {"0": 1, "2": 1}
    assert aggregates[2].draft.aggregator == "fedadam"


def test_an_update_older_than_the_maximum_staleness_is_quarantined_with_the_reason(tmp_path):
    setting = {"buffer": 2, "max_staleness": 1, "staleness": {"function": "constant"}}
    world = World(tmp_path, SPEC, aggregator="fedavg", asynchronous=setting)
    for round_number in range(2):
        push(world, round_number, 10 + round_number, 5)
        push(world, round_number, 20 + round_number, 5)
        world.run()
    push(world, 0, 30, 5)  # round 3 from the initial model: τ = 2
    push(world, 2, 31, 5)
    push(world, 1, 32, 5)  # τ = 1: accepted
    outcome = world.engine().run_round("e")
    assert outcome.status == "committed"
    assert len(outcome.quarantined) == 1
    status, reason = world.metadata.update_status(outcome.quarantined[0])
    assert status == "quarantined"
    assert reason == "stale: trained on round 0, 2 rounds behind"
    # the buffer took the two oldest; the stale one was quarantined, so the round used one
    assert len(outcome.aggregate.draft.update_ids) == 1
    assert world.metadata.aggregates("e")[2].draft.report["staleness"]["mix"] == {"0": 1}


@pytest.mark.parametrize("aggregator", ["fedavg", "fedyogi"])
def test_sharded_and_unsharded_asynchronous_rounds_are_bit_identical(tmp_path, aggregator):
    setting = {"buffer": 3, "staleness": {"function": "polynomial", "a": 1}}
    digests = []
    for shard_bytes in (None, SPEC.nbytes // 3):
        world = World(tmp_path / str(shard_bytes), SPEC, aggregator=aggregator, asynchronous=setting)
        bases = [0, 0, 0, 1, 0, 1, 2, 1, 0]
        for number, base in enumerate(bases):
            push(world, base, 50 + number, 3 + number)
            if number % 3 == 2:
                world.run(shard_bytes=shard_bytes)
        digests.append([(a.draft.content_id, a.draft.input_weights) for a in world.metadata.aggregates("e")])
    assert digests[0] == digests[1]
    assert len(digests[0]) == 3


def test_a_norm_bound_clips_each_change_from_its_own_base_before_the_discount(tmp_path):
    setting = {"buffer": 2, "staleness": {"function": "fedbuff"}, "server_learning_rate": 0.5}
    s = Staleness.from_config(setting["staleness"])
    bound = 1.0
    world = World(
        tmp_path,
        SPEC,
        aggregator="fedavg",
        asynchronous=setting,
        update_norm={"mode": "clip", "bound": bound},
    )
    first = [push(world, 0, 1, 10), push(world, 0, 2, 30)]
    world.run()
    second = [push(world, 0, 3, 20), push(world, 1, 4, 20)]  # the first τ = 1
    world.run()

    def clipped(changes):
        out = []
        for change, n, base in changes:
            norm = np.sqrt(sum((change[k] ** 2).sum() for k in change))
            factor = min(1.0, bound / norm)
            out.append(({k: change[k] * factor for k in change}, n, base))
        return out

    x = as64(world.initial)
    for number, changes in enumerate((first, second), start=1):
        mean = discounted_mean(clipped(changes), number, s)
        x = {k: x[k] + 0.5 * mean[k] for k in x}
    draft = world.metadata.aggregates("e")[1].draft
    got = world.read(draft.weights_key)
    for k in x:
        np.testing.assert_allclose(got[k], x[k], rtol=1e-5, atol=1e-6)
    assert set(draft.report) == {"norms", "staleness", "updates"}
