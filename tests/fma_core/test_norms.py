"""Norm bounds on updates (``fma_core.norms``): refusing or clipping each update whose change from its
base is too long, at a fixed or an adaptive bound, before any aggregator reads it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fma_core.errors import ConfigurationError
from fma_core.norms import NormPolicy, screen
from fma_core.shards import RoundPlan
from fma_core.weights import TensorSpec

from .engine_world import World

SPEC = TensorSpec.from_json(
    [
        {"name": "w", "dtype": "F32", "shape": [300, 700]},
        {"name": "b", "dtype": "F32", "shape": [700]},
        {"name": "steps", "dtype": "I64", "shape": [1]},
    ]
)
FLOATS = ("w", "b")


def world(root: Path, update_norm: dict[str, Any] | None, **options: Any) -> World:
    return World(
        root, SPEC, aggregator=options.pop("aggregator", "fedavg"), update_norm=update_norm, **options
    )


def norm(change: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(change[name] ** 2)) for name in FLOATS))


def test_refuse_quarantines_the_long_update_naming_its_norm_and_the_bound(tmp_path: Path) -> None:
    w = world(tmp_path, {"mode": "refuse", "bound": 60.0})
    changes = [w.train(0, seed=1 + i, num_examples=1) for i in range(3)]
    long = w.train(0, seed=9, num_examples=1, scale=5.0)
    assert all(norm(c) < 60 for c in changes)
    assert norm(long) > 60
    outcome = w.engine().run_round("e")
    assert outcome.status == "committed"
    assert outcome.quarantined == ("u4",)
    status, reason = w.metadata.update_status("u4")
    assert status == "quarantined"
    assert f"{norm(long):.6g}" in reason
    assert "exceeds the bound 60" in reason
    record = outcome.aggregate
    assert sorted(record.draft.update_ids) == ["u1", "u2", "u3"]
    section = record.draft.report["norms"]
    assert section["mode"] == "refuse"
    assert section["bound"] == 60.0
    assert section["source"] == "fixed"
    assert section["accepted"] == pytest.approx(
        {f"u{i + 1}": norm(c) for i, c in enumerate(changes)}, rel=1e-6
    )
    assert section["refused"] == pytest.approx({"u4": norm(long)}, rel=1e-6)
    expected = {k: w.initial[k] + sum(c[k] for c in changes) / 3 for k in FLOATS}
    result = w.model(1)
    for name in FLOATS:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("aggregator", ["fedavg", "median", "fedavgm"])
def test_clip_scales_each_long_change_to_the_bound_for_every_aggregator(
    tmp_path: Path, delta: bool, aggregator: str
) -> None:
    params = {"server_learning_rate": 1.0, "momentum": 0.0} if aggregator == "fedavgm" else {}
    w = world(tmp_path, {"mode": "clip", "bound": 60.0}, delta=delta, aggregator=aggregator, params=params)
    changes = [w.train(0, seed=1 + i, num_examples=1, scale=0.1 if i else 2.0) for i in range(3)]
    outcome = w.engine().run_round("e")
    assert outcome.status == "committed"
    assert outcome.quarantined == ()
    clipped = [{k: v * min(1.0, 60.0 / norm(c)) for k, v in c.items()} for c in changes]
    combine = {"median": lambda xs: np.median(xs, axis=0)}.get(aggregator, lambda xs: np.mean(xs, axis=0))
    result = w.model(1)
    for name in FLOATS:
        expected = w.initial[name] + combine([c[name] for c in clipped])
        np.testing.assert_allclose(result[name], expected, rtol=1e-5, atol=1e-5)
    unclipped = np.rint(w.initial["steps"] + combine([c["steps"] for c in changes]))
    np.testing.assert_array_equal(result["steps"], unclipped)  # integer tensors are not clipped
    section = outcome.aggregate.draft.report["norms"]
    assert set(section["clip"]) == {"u1"}
    assert section["clip"]["u1"] == pytest.approx(60.0 / norm(changes[0]), rel=1e-6)
    assert section["refused"] == {}


def test_a_clipped_round_sharded_over_workers_is_bit_identical_to_the_whole_round(tmp_path: Path) -> None:
    """The screening travels in the plan, as JSON to each shard's worker: every shard clips the same
    updates by the same factors."""
    models = []
    for name, shard_bytes in (("whole", None), ("sharded", 100_000)):
        w = world(tmp_path / name, {"mode": "clip", "bound": 60.0}, aggregator="trimmed_mean")
        for i in range(4):
            w.train(0, seed=1 + i, num_examples=1 + i, scale=2.0 if i == 2 else 0.1)
        plan = w.engine(shard_bytes=shard_bytes).start_round("e")
        assert isinstance(plan, RoundPlan)
        assert list(plan.norms["clip"]) == ["u3"]
        sent = RoundPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
        assert sent == plan
        outcomes = [w.engine(shard_bytes=shard_bytes).finish_shard(sent, i) for i in range(len(sent.shards))]
        assert [o.status for o in outcomes][-1] == "committed"
        assert len(outcomes) == (1 if shard_bytes is None else len(plan.shards))
        models.append(w.model(1))
    assert len(plan.shards) > 1
    for name in models[0]:
        assert models[0][name].tobytes() == models[1][name].tobytes()


def test_the_adaptive_bound_comes_from_the_round_itself_then_from_recent_rounds_reports(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, {"mode": "refuse", "adaptive": {"multiplier": 2, "window": 2}})
    first = [w.train(0, seed=1 + i, num_examples=1, scale=s) for i, s in enumerate((0.1, 0.1, 0.12, 5.0))]
    w.run()
    section = w.metadata.aggregates("e")[0].draft.report["norms"]
    assert section["source"] == "this round"
    assert section["bound"] == pytest.approx(2 * np.median([norm(c) for c in first]), rel=1e-6)
    assert list(section["refused"]) == ["u4"]
    # a new engine (a restart): round 2's bound comes from round 1's accepted norms, read back from its report
    second = [w.train(1, seed=20 + i, num_examples=1, scale=s) for i, s in enumerate((0.1, 0.3, 0.3))]
    w.run()
    section = w.metadata.aggregates("e")[1].draft.report["norms"]
    accepted = [norm(c) for c in first[:3]]
    assert section["source"] == "recent rounds"
    assert section["bound"] == pytest.approx(2 * np.median(accepted), rel=1e-6)
    assert sorted(section["refused"]) == ["u7", "u8"]
    assert norm(second[1]) > section["bound"]
    # round 3: the window of 2 rounds holds round 2's accepted norm and round 1's three
    w.train(2, seed=30, num_examples=1)
    w.run()
    section = w.metadata.aggregates("e")[2].draft.report["norms"]
    assert section["bound"] == pytest.approx(2 * np.median([*accepted, norm(second[0])]), rel=1e-6)


def test_a_bound_needs_a_global_model_to_measure_changes_from(tmp_path: Path) -> None:
    w = world(tmp_path, {"mode": "clip", "bound": 1.0}, initial=False)
    w.train(0, seed=1, num_examples=1)
    outcome = w.engine().run_round("e")
    assert outcome.status == "failed"
    assert "update_norm" in outcome.reason
    assert "initial model" in outcome.reason


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("clip", "must be an object"),
        ({"mode": "drop", "bound": 1}, "update_norm.mode must be one of refuse, clip"),
        ({"mode": "clip"}, "exactly one"),
        ({"mode": "clip", "bound": 1, "adaptive": {}}, "exactly one"),
        ({"mode": "clip", "bound": 0}, "update_norm.bound must be a finite number above 0"),
        ({"mode": "clip", "bound": -2.5}, "above 0"),
        ({"mode": "clip", "bound": math.inf}, "finite"),
        ({"mode": "clip", "bound": math.nan}, "finite"),
        ({"mode": "clip", "bound": 10**400}, "finite number above 0, not 1000000000"),
        ({"mode": "clip", "bound": "5"}, "finite number"),
        ({"mode": "clip", "bound": True}, "finite number"),
        ({"mode": "clip", "bound": 1, "limit": 2}, "unknown key(s) limit in update_norm"),
        ({"mode": "clip", "adaptive": {"multiplier": 3, "rounds": 2}}, "unknown key(s) rounds"),
        ({"mode": "clip", "adaptive": {"window": 0}}, "window must be a whole number from 1 to 100"),
        ({"mode": "clip", "adaptive": {"window": 2.5}}, "whole number"),
        ({"mode": "clip", "adaptive": {"multiplier": 0}}, "multiplier must be a finite number above 0"),
        ({"mode": "clip", "adaptive": [3]}, "adaptive must be an object"),
    ],
)
def test_bad_configurations_are_refused_naming_what_is_wrong(config: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NormPolicy.from_config(config)


def test_configurations_parse_with_defaults() -> None:
    assert NormPolicy.from_config(None) is None
    policy = NormPolicy.from_config({"mode": "clip", "adaptive": {}})
    assert policy.adaptive is not None
    assert (policy.adaptive.multiplier, policy.adaptive.window) == (3.0, 5)
    assert NormPolicy.from_config({"mode": "refuse", "bound": 2}).bound == 2.0


def test_an_update_whose_norm_is_not_finite_is_refused_in_either_mode() -> None:
    policy = NormPolicy.from_config({"mode": "clip", "bound": 1.0})
    screening = screen(policy, {"a": 0.5, "b": math.inf, "c": 4.0}, [])
    assert screening.refused == {"b": "the norm of its change is not finite"}
    assert screening.clip == {"c": 0.25}
    assert "b" not in screening.to_json()["norms"]
