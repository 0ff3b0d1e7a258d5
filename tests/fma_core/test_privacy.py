"""Central differential privacy (``fma_core.privacy``): exact clipping, keyed noise of the right scale that
every shard and retry draws alike, the accountant against dp-accounting, and a budget that stops rounds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest

from fma_core.errors import ConfigurationError
from fma_core.privacy import PrivacyPolicy, RoundNoise, epsilon_spent, round_key, standard_normal
from fma_core.shards import RoundPlan
from fma_core.weights import TensorSpec

from .engine_world import World

SPEC = TensorSpec.from_json(
    [{"name": "w", "dtype": "F32", "shape": [200, 300]}, {"name": "b", "dtype": "F32", "shape": [300]}]
)
SECRET = bytes(range(32))
PRIVACY = {
    "clip": {"bound": 20.0},
    "noise_multiplier": 1.0,
    "expected_clients": 4,
    "epsilon": 50,
    "delta": 1e-5,
}


def world(root: Path, privacy: dict[str, Any] | None = None, **options: Any) -> World:
    return World(
        root,
        SPEC,
        aggregator=options.pop("aggregator", "fedavg"),
        privacy=PRIVACY if privacy is None else privacy,
        privacy_secret=SECRET,
        **options,
    )


def push_round(w: World, base_round: int, first_seed: int) -> list[dict[str, np.ndarray]]:
    """One update from each of the three clients, one of them long (clipped), with unequal num_examples."""
    return [
        w.train(base_round, seed=first_seed + i, num_examples=10 * (i + 1), scale=0.2 if i == 1 else 0.01)
        for i in range(3)
    ]


def norm(change: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(v**2)) for v in change.values()))


def noise_of(round_number: int, stddev: float) -> dict[str, np.ndarray]:
    noise = RoundNoise(round_key(SECRET, round_number), stddev)
    out = {}
    for info in SPEC:
        values = np.zeros(info.size, np.float64)
        noise.add(info.name, 0, info.size, values)
        out[info.name] = values.reshape(info.shape)
    return out


def test_the_noise_stream_is_the_same_whichever_range_asks_for_it() -> None:
    whole = standard_normal(SECRET, "tensor/w", 0, 5000)
    for start, stop in ((0, 1), (3, 4), (5, 1029), (1024, 5000), (4999, 5000), (7, 7)):
        assert standard_normal(SECRET, "tensor/w", start, stop).tobytes() == whole[start:stop].tobytes()
    assert not np.array_equal(standard_normal(SECRET, "tensor/b", 0, 100), whole[:100])
    assert not np.array_equal(standard_normal(round_key(SECRET, 2), "tensor/w", 0, 100), whole[:100])


def test_the_noise_is_standard_normal() -> None:
    """A fixed key, so the sample is always the same: the bounds are five standard errors of each
    statistic for n draws, which a true N(0, 1) sample exceeds with probability below 1e-6."""
    n = 400_000
    sample = standard_normal(round_key(SECRET, 7), "tensor/w", 0, n)
    assert abs(sample.mean()) < 5 / math.sqrt(n)
    assert abs(sample.var() - 1) < 5 * math.sqrt(2 / n)
    kurtosis = float(np.mean(sample**4))  # 3 for a normal; its standard error is √(96/n)
    assert abs(kurtosis - 3) < 5 * math.sqrt(96 / n)
    tail = float(np.mean(np.abs(sample) > 1.959964))  # 5 % for a normal
    assert abs(tail - 0.05) < 5 * math.sqrt(0.05 * 0.95 / n)


@pytest.mark.parametrize("delta", [False, True])
def test_a_private_round_is_the_parent_plus_the_clipped_sum_and_the_keyed_noise_over_m(
    tmp_path: Path, delta: bool
) -> None:
    w = world(tmp_path, delta=delta)
    changes = push_round(w, 0, 1)
    norms = [norm(c) for c in changes]
    assert norms[1] > 20 > max(norms[0], norms[2])
    outcome = w.engine().run_round("e")
    assert outcome.status == "committed", outcome.reason
    m, bound = 4, 20.0
    noise = noise_of(1, 1.0 * bound / m)
    result = w.model(1)
    for name in result:
        clipped = sum(c[name] * min(1.0, bound / n) for c, n in zip(changes, norms, strict=True))
        expected = w.initial[name] + clipped / m + noise[name]
        np.testing.assert_allclose(result[name], expected, rtol=0, atol=2e-5)
    report = outcome.aggregate.draft.report["privacy"]
    assert report["clip_bound"] == bound
    assert "clipped_updates" not in report  # a count of the data, without noise, would leak
    assert report["noise_stddev"] == pytest.approx(bound / m)
    assert report["charged_rounds"] == 1
    assert report["epsilon"] == pytest.approx(epsilon_spent(1.0, 1, 1e-5))
    assert "u1" not in json.dumps(report)  # no client's norm or factor in the lineage


@pytest.mark.parametrize("aggregator", ["mean", "fedavgm", "fedadam"])
def test_server_optimizers_and_linear_rules_read_the_noised_mean_change(
    tmp_path: Path, aggregator: str
) -> None:
    params = {"server_learning_rate": 1.0, "momentum": 0.0} if aggregator == "fedavgm" else {}
    w = world(tmp_path, aggregator=aggregator, params=params)
    changes = push_round(w, 0, 1)
    norms = [norm(c) for c in changes]
    w.run()
    mean_change = {
        name: sum(c[name] * min(1.0, 20.0 / n) for c, n in zip(changes, norms, strict=True)) / 4
        + noise_of(1, 5.0)[name]
        for name in SPEC.names
    }
    result = w.model(1)
    if aggregator == "fedadam":  # one Adam step from zero moments: η·(1−β₁)Δ / (√((1−β₂)Δ²) + τ)
        step = {n: 0.1 * 0.1 * d / (np.sqrt(0.01 * d**2) + 1e-9) for n, d in mean_change.items()}
    else:
        step = mean_change
    for name in result:
        np.testing.assert_allclose(result[name], w.initial[name] + step[name], rtol=1e-4, atol=2e-4)


def test_a_sharded_private_round_is_bit_identical_to_the_whole_round(tmp_path: Path) -> None:
    models = []
    for name, shard_bytes in (("whole", None), ("sharded", 60_000)):
        w = world(tmp_path / name)
        push_round(w, 0, 1)
        plan = w.engine(shard_bytes=shard_bytes).start_round("e")
        assert isinstance(plan, RoundPlan)
        payload = json.dumps(plan.to_dict())
        assert SECRET.hex() not in payload
        assert round_key(SECRET, 1).hex() not in payload
        sent = RoundPlan.from_dict(json.loads(payload))
        outcomes = [w.engine(shard_bytes=shard_bytes).finish_shard(sent, i) for i in range(len(sent.shards))]
        assert outcomes[-1].status == "committed"
        models.append(w.model(1))
    assert len(plan.shards) > 1
    for name in models[0]:
        assert models[0][name].tobytes() == models[1][name].tobytes()


def test_a_retried_round_adds_the_same_noise(tmp_path: Path) -> None:
    w = world(tmp_path)
    push_round(w, 0, 1)
    engine = w.engine()
    claim = engine.claim("e")
    first = engine.compute(claim)
    w.metadata.release_round(claim, failure="the worker died")
    w.run()  # the retry: a new claim, a new engine
    assert w.read(first.draft.weights_key)["w"].tobytes() == w.model(1)["w"].tobytes()


def test_the_accountant_is_dp_accountings_rdp_for_the_same_parameters() -> None:
    for z, rounds, delta in ((1.1, 1, 1e-5), (0.8, 40, 1e-5), (3.0, 200, 1e-6)):
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)
        assert epsilon_spent(z, rounds, delta) == accountant.get_epsilon(delta)
    assert epsilon_spent(1.0, 0, 1e-5) == 0.0


def test_a_spent_budget_stops_the_next_round_across_a_restart(tmp_path: Path) -> None:
    budget = (epsilon_spent(1.0, 2, 1e-5) + epsilon_spent(1.0, 3, 1e-5)) / 2  # two rounds, not three
    w = world(tmp_path, {**PRIVACY, "epsilon": budget})
    for r in range(2):
        push_round(w, r, 10 * r + 1)
        w.run()
    assert w.metadata.aggregates("e")[-1].draft.report["privacy"]["epsilon"] == pytest.approx(
        epsilon_spent(1.0, 2, 1e-5)
    )
    push_round(w, 2, 21)
    outcome = w.engine().run_round("e")
    assert outcome.status == "budget_spent"
    assert f"over the budget ε = {budget:g}" in outcome.reason
    assert len(w.metadata.aggregates("e")) == 2
    assert len(w.metadata.pending_updates("e")) == 3  # nothing consumed or quarantined
    assert w.metadata.budget_spent_detail("e") == outcome.reason
    assert w.engine().run_round("e").status == "idle"  # a stopped experiment is not claimed
    assert w.metadata.experiments_to_sweep(now=1e12) == []
    w.metadata._spent.clear()  # even without that mark, a new engine finds the budget spent in the lineage
    assert w.engine().run_round("e").status == "budget_spent"


def test_a_client_counts_once_a_round(tmp_path: Path) -> None:
    w = world(tmp_path)
    push_round(w, 0, 1)
    w.count = 0  # the next update comes from c1 again
    w.train(0, seed=9, num_examples=1)
    outcome = w.engine().run_round("e")
    assert outcome.quarantined == ("u1",)
    assert "counts once a round" in w.metadata.update_status("u1")[1]
    assert len(outcome.aggregate.draft.update_ids) == 3


def test_adaptive_clipping_moves_the_bound_by_the_noised_fraction_within_it(tmp_path: Path) -> None:
    adaptive = {"initial": 1.0, "target_quantile": 0.5, "learning_rate": 0.2, "count_stddev": 2.0}
    privacy = {**PRIVACY, "clip": {"adaptive": adaptive}}
    w = world(tmp_path, privacy)
    changes = push_round(w, 0, 1)
    assert sum(norm(c) <= 1.0 for c in changes) == 0  # every norm is above the first bound
    w.run()
    report = w.metadata.aggregates("e")[0].draft.report["privacy"]
    count_noise = RoundNoise(round_key(SECRET, 1), 0.0).count_noise()
    fraction = (0 + 2.0 * count_noise) / 4
    assert report["next_clip_bound"] == pytest.approx(math.exp(-0.2 * (fraction - 0.5)))
    z_update = (1.0**-2 - (2 * 2.0) ** -2) ** -0.5
    assert report["update_noise_multiplier"] == pytest.approx(z_update)
    assert report["noise_stddev"] == pytest.approx(z_update * 1.0 / 4)
    push_round(w, 1, 11)
    w.engine().run_round("e")
    assert w.metadata.aggregates("e")[1].draft.report["privacy"]["clip_bound"] == report["next_clip_bound"]


@pytest.mark.parametrize(
    ("aggregator", "options", "message"),
    [
        ("median", {}, "aggregator 'median' is not usable with differential privacy"),
        ("krum", {"params": {"f": 0}}, "aggregator 'krum' is not usable"),
        (
            "fedavg",
            {"update_norm": {"mode": "clip", "bound": 1.0}},
            "update_norm does not combine with privacy",
        ),
    ],
)
def test_rounds_refuse_what_privacy_cannot_combine_with(
    tmp_path: Path, aggregator: str, options: dict[str, Any], message: str
) -> None:
    w = world(tmp_path, aggregator=aggregator, **options)
    push_round(w, 0, 1)
    outcome = w.engine().run_round("e")
    assert outcome.status == "failed"
    assert message in outcome.reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"noise_multiplier": 0}, "privacy.noise_multiplier must be a finite number above 0"),
        ({"expected_clients": 0}, "privacy.expected_clients must be a whole number from 1 to 1,000,000,000"),
        ({"expected_clients": 10**400}, "privacy.expected_clients must be a whole number from 1"),
        ({"delta": 1.5}, "privacy.delta must be below 1"),
        ({"epsilon": "8"}, "privacy.epsilon must be a finite number above 0"),
        ({"clip": {"bound": 1, "adaptive": {}}}, "privacy.clip takes exactly one of"),
        ({"clip": {"adaptive": {"target_quantile": 0.5}}}, "privacy.clip.adaptive.initial"),
        ({"clip": {"adaptive": {"initial": 1, "target_quantile": 1.2}}}, "target_quantile must be in (0, 1)"),
        (
            {"clip": {"adaptive": {"initial": 1, "count_stddev": 0.4}}},
            "must exceed half the noise multiplier",
        ),
        ({"sigma": 1}, "unknown key(s) sigma in privacy"),
    ],
)
def test_bad_settings_are_refused_naming_the_fault(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        PrivacyPolicy.from_config({**PRIVACY, **change})
    assert message in str(raised.value)
    config = {**PRIVACY}
    del config["delta"]
    with pytest.raises(ConfigurationError, match=r"privacy\.delta is missing"):
        PrivacyPolicy.from_config(config)
