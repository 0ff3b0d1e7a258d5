"""The server's round bookkeeping (fma_core.secagg.coordinator): stages, deadlines, dropouts, failure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fma_core.secagg import (
    ClientSession,
    FieldParams,
    Quantizer,
    RoundParams,
    SecureRound,
    StageError,
)

LENGTH = 90
STAGE = 60.0
STAGE_NAMES = ("advertise", "share_keys", "masked_input", "unmasking")


def stored(round_: SecureRound) -> SecureRound:
    """What a service reads back from its row: every step goes through JSON."""
    return SecureRound.from_json(json.loads(json.dumps(round_.to_json())))


def play(n: int, drop: dict[str, set[str]] | None = None):
    """A round where the clients in ``drop[stage]`` never answer that stage; the clock runs to each deadline."""
    drop = drop or {}
    field = FieldParams(clip=4.0, bits=20, max_weight=100, stochastic=False)
    params = RoundParams("exp-7", 3, graph_seed=5, field=field)
    ids = [f"c{i:02d}" for i in range(n)]
    rng = np.random.default_rng(1)
    updates = {c: rng.normal(0, 1, LENGTH) for c in ids}
    weights = {c: int(rng.integers(1, 100)) for c in ids}
    sessions = {c: ClientSession(c, params) for c in ids}
    now = 1000.0
    round_ = SecureRound.start(params, ids, LENGTH, STAGE, now)
    store: dict[str, np.ndarray] = {}
    unmasker = None
    for stage in STAGE_NAMES:
        for c in ids:
            if c in drop.get(stage, ()):
                continue
            round_ = stored(round_)
            members = {
                "advertise": round_.invited,
                "share_keys": round_.roster,
                "masked_input": round_.shared,
                "unmasking": round_.survivors,
            }[stage]
            if c not in members:  # dropped at an earlier stage
                continue
            if stage == "advertise":
                round_.advertise(c, sessions[c].advertise())
            elif stage == "share_keys":
                round_.share_keys(c, sessions[c].share_keys(round_.roster_keys(c)))
            elif stage == "masked_input":
                sessions[c].receive_shares(round_.inbox(c))
                store[f"in/{c}"] = np.concatenate(list(sessions[c].masked_input([updates[c]], weights[c])))
                round_.masked_input(c, f"in/{c}")
            else:
                round_.reveal(c, sessions[c].unmask(round_.survivors_for(c)))
        everyone_answered = not drop.get(stage)
        unmasker = round_.advance(now)
        if not everyone_answered and round_.stage == stage:
            now += STAGE  # a missing client holds the stage until its deadline
            unmasker = round_.advance(now)
        round_ = stored(round_)
        if round_.stage == "failed":
            return round_, None, store, updates, weights, field
    return round_, unmasker, store, updates, weights, field


def unmasked_mean(round_, unmasker, store, field):
    total = np.zeros(LENGTH + 1, dtype=np.uint64)
    for c in round_.survivors:
        total += store[round_.inputs[c]]
    weight_sum = unmasker.weight_sum(int(total[0]))
    return unmasker.unmask(1, total[1:]), unmasker.mean(1, total[1:], weight_sum), weight_sum


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_a_dropout_at_any_stage_still_unmasks_the_survivors_exact_sum(stage):
    round_, unmasker, store, updates, weights, field = play(10, {stage: {"c03", "c08"}})
    assert round_.stage == "unmasked"
    gone = {"c03", "c08"} if stage != "unmasking" else set()
    assert set(round_.survivors) == {f"c{i:02d}" for i in range(10)} - gone
    summed, mean, weight_sum = unmasked_mean(round_, unmasker, store, field)
    plain = sum(Quantizer(field, weights[c]).encode(updates[c]) for c in round_.survivors)
    np.testing.assert_array_equal(summed, plain)
    assert weight_sum == sum(weights[c] for c in round_.survivors)
    expected = sum(weights[c] * np.clip(updates[c], -4, 4) for c in round_.survivors) / weight_sum
    assert np.max(np.abs(mean - expected)) <= 0.5 / field.scale + 1e-12
    dropped_from = STAGE_NAMES.index(stage)
    assert round_.counts == {s: 10 - 2 * (STAGE_NAMES.index(s) >= dropped_from) for s in STAGE_NAMES}
    # a restart rebuilds the same unmasking from the kept state
    zeros = np.zeros(4, np.uint64)
    np.testing.assert_array_equal(stored(round_).unmasker().unmask(0, zeros), unmasker.unmask(0, zeros))


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_below_the_threshold_the_round_fails_saying_why_and_keeps_no_secret(stage):
    round_, unmasker, *_ = play(6, {stage: {"c00", "c01", "c02", "c03"}})
    assert unmasker is None
    assert round_.stage == "failed"
    assert "needed" in round_.reason
    assert round_.outbox == {}
    assert round_.revealed == {}
    with pytest.raises(StageError, match="failed") as caught:
        round_.advertise("c05", ClientSession("c05", round_.params).advertise())
    assert caught.value.code == "secagg_failed"


def test_requests_out_of_stage_or_from_dropped_clients_are_refused():
    params = RoundParams("e", 1, graph_seed=2, field=FieldParams(max_weight=10))
    sessions = {c: ClientSession(c, params) for c in ("a", "b", "c", "d")}
    round_ = SecureRound.start(params, ["a", "b", "c", "d"], 4, STAGE, 0.0)
    for c in ("a", "b", "c"):
        round_.advertise(c, sessions[c].advertise())
    round_.advertise("a", sessions["a"].advertise())  # a retry is no change
    with pytest.raises(StageError, match="other keys"):
        round_.advertise("a", sessions["b"].advertise())
    with pytest.raises(StageError, match="not taking part"):
        round_.advertise("zz", sessions["d"].advertise())
    assert round_.advance(10.0) is None
    assert round_.stage == "advertise"
    assert round_.advance(STAGE) is None
    assert round_.stage == "share_keys"
    with pytest.raises(StageError, match="not taking part") as caught:
        round_.roster_keys("d")  # advertised nothing: dropped for the rest of the round
    assert caught.value.code == "secagg_dropped"
    with pytest.raises(StageError, match="'share_keys', not 'masked_input'"):
        round_.inbox("a")
    with pytest.raises(StageError, match="one encrypted share per neighbour"):
        round_.share_keys("a", {"b": b"x"})


def test_a_round_too_large_for_the_field_is_refused_before_it_starts():
    params = RoundParams("e", 1, graph_seed=2, field=FieldParams(bits=40, max_weight=2**20))
    with pytest.raises(ValueError, match="overflow"):
        SecureRound.start(params, [f"c{i}" for i in range(params.field.capacity() + 1)], 4, STAGE, 0.0)
