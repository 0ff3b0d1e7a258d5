"""The SecAgg+ protocol core (fma_core.secagg): exact sums through dropouts, thresholds, masking."""

from __future__ import annotations

import numpy as np
import pytest

from fma_core.secagg import (
    ClientSession,
    FieldParams,
    NotEnoughShares,
    Quantizer,
    RoundParams,
    SecAggAbort,
    crypto,
    neighbour_graph,
    reconstruct_secrets,
    shamir,
)
from fma_core.secagg.client import PublicKeys, Share
from fma_core.secagg.server import InconsistentShares

BLOCK = 37  # not a multiple of anything, so blocks straddle AES counter blocks


def blocks_of(vector: np.ndarray, size: int = BLOCK):
    for start in range(0, vector.size, size):
        yield vector[start : start + size]


def run_round(n, length, drop=None, degree=None, field=None, seed=3):
    """One round in memory; ``drop`` maps a stage (1..4) to the client ids that vanish before it."""
    drop = {stage: set(ids) for stage, ids in (drop or {}).items()}
    field = field or FieldParams(clip=4.0, bits=20, max_weight=1000, stochastic=False)
    params = RoundParams("exp-1", 5, graph_seed=11, degree=degree, field=field)
    rng = np.random.default_rng(seed)
    ids = [f"client-{i:03d}" for i in range(n)]
    updates = {i: rng.normal(0, 1, length) for i in ids}
    weights = {i: int(rng.integers(1, 1000)) for i in ids}
    sessions = {i: ClientSession(i, params) for i in ids}
    roster = {i: sessions[i].advertise() for i in ids if i not in drop.get(1, ())}
    outbox = {i: sessions[i].share_keys(roster) for i in roster if i not in drop.get(2, ())}
    masked = {}
    for i in outbox:
        if i in drop.get(3, ()):
            continue
        sessions[i].receive_shares({j: outbox[j][i] for j in outbox if i in outbox[j]})
        masked[i] = np.concatenate(list(sessions[i].masked_input(blocks_of(updates[i]), weights[i])))
    revealed = {i: sessions[i].unmask(masked) for i in masked if i not in drop.get(4, ())}
    unmasker = reconstruct_secrets(params, roster, outbox, masked, revealed, length)
    total = np.zeros(length + 1, dtype=np.uint64)
    for vector in masked.values():
        total += vector
    weight_sum = unmasker.weight_sum(int(total[0]))
    mean = np.concatenate(
        [unmasker.mean(s, total[s : s + BLOCK], weight_sum) for s in range(1, length + 1, BLOCK)]
    )
    plain = sum(Quantizer(field, weights[i]).encode(updates[i]) for i in masked)
    expected_unmasked = np.concatenate(
        [unmasker.unmask(s, total[s : s + BLOCK]) for s in range(1, length + 1, BLOCK)]
    )
    return {
        "survivors": set(masked),
        "weight_sum": weight_sum,
        "expected_weight_sum": sum(weights[i] for i in masked),
        "mean": mean,
        # the mean of the clipped values: clipping is the encoding's documented range
        "float_mean": sum(weights[i] * np.clip(updates[i], -field.clip, field.clip) for i in masked)
        / sum(weights[i] for i in masked),
        "plain_sum": plain,
        "unmasked_sum": expected_unmasked,
        "masked": masked,
        "updates": updates,
        "weights": weights,
        "field": field,
    }


def assert_exact(result):
    assert result["weight_sum"] == result["expected_weight_sum"]
    np.testing.assert_array_equal(result["unmasked_sum"], result["plain_sum"])
    # deterministic rounding: each value is within half a step of the truth, so is the weighted mean
    step = 1 / result["field"].scale
    assert np.max(np.abs(result["mean"] - result["float_mean"])) <= step / 2 + 1e-12


@pytest.mark.parametrize("degree", [None, 4])
def test_no_dropout_gives_the_exact_weighted_sum(degree):
    result = run_round(12, 200, degree=degree)
    assert result["survivors"] == set(result["updates"])
    assert_exact(result)


@pytest.mark.parametrize(
    "drop",
    [
        {1: {"client-002"}},
        {2: {"client-004", "client-009"}},
        {3: {"client-001", "client-007"}},
        {4: {"client-003"}},
        {1: {"client-000"}, 2: {"client-005"}, 3: {"client-010"}, 4: {"client-011"}},
    ],
    ids=["advertise", "share-keys", "masked-input", "unmasking", "every-stage"],
)
@pytest.mark.parametrize("degree", [None, 6])
def test_dropouts_at_every_stage_leave_the_survivors_exact_sum(drop, degree):
    result = run_round(14, 150, drop=drop, degree=degree)
    dropped_before_input = set().union(*(drop.get(s, set()) for s in (1, 2, 3)))
    assert result["survivors"] == set(result["updates"]) - dropped_before_input
    assert_exact(result)


def test_a_sparse_graph_at_scale_is_exact():
    result = run_round(40, 64, drop={3: {f"client-{i:03d}" for i in range(0, 40, 9)}})
    assert_exact(result)


def test_stochastic_rounding_is_unbiased_enough_for_a_mean():
    field = FieldParams(clip=4.0, bits=16, max_weight=1000, stochastic=True)
    result = run_round(8, 4000, field=field)
    step = 1 / field.scale
    error = result["mean"] - result["float_mean"]
    assert np.max(np.abs(error)) < step
    assert abs(float(np.mean(error))) < step / 20


def test_unmasking_with_fewer_than_t_shares_fails():
    params = RoundParams("exp", 1, graph_seed=1, field=FieldParams(max_weight=10))
    ids = [f"c{i}" for i in range(6)]
    sessions = {i: ClientSession(i, params) for i in ids}
    roster = {i: s.advertise() for i, s in sessions.items()}
    outbox = {i: s.share_keys(roster) for i, s in sessions.items()}
    for i, s in sessions.items():
        s.receive_shares({j: outbox[j][i] for j in outbox if i in outbox[j]})
        list(s.masked_input([np.zeros(3)], 1))
    t = params.shares_needed(6)
    revealed = {i: sessions[i].unmask(ids) for i in ids[: t - 1]}
    with pytest.raises(NotEnoughShares, match=f"{t} needed"):
        reconstruct_secrets(params, roster, ids, ids, revealed, 3)
    # and Shamir itself: t − 1 points are not the secret
    points = shamir.split(123456789, 3, [1, 2, 3, 4])
    assert shamir.combine({1: points[1], 4: points[4], 2: points[2]}, 3) == 123456789
    with pytest.raises(ValueError, match="3 needed"):
        shamir.combine({1: points[1], 2: points[2]}, 3)


def test_below_the_threshold_the_round_fails_and_reveals_nothing():
    with pytest.raises(NotEnoughShares):
        run_round(6, 10, drop={4: {"client-000", "client-001", "client-002", "client-003"}})
    with pytest.raises(SecAggAbort, match="needed"):
        run_round(6, 10, drop={3: {"client-000", "client-001", "client-002", "client-003"}})


def test_a_masked_update_differs_from_its_plain_encoding_in_every_block():
    result = run_round(5, 1000)
    field = result["field"]
    for client, vector in result["masked"].items():
        plain = Quantizer(field, result["weights"][client]).encode(result["updates"][client])
        assert vector[0] != result["weights"][client]  # the weight is masked too
        for start in range(0, 1000, BLOCK):
            assert (
                np.count_nonzero(vector[1 + start : 1 + start + BLOCK] == plain[start : start + BLOCK]) == 0
            )


def test_a_client_never_reveals_both_secrets_of_one_neighbour():
    params = RoundParams("exp", 1, graph_seed=1, field=FieldParams(max_weight=10))
    ids = [f"c{i}" for i in range(5)]
    sessions = {i: ClientSession(i, params) for i in ids}
    roster = {i: s.advertise() for i, s in sessions.items()}
    outbox = {i: s.share_keys(roster) for i, s in sessions.items()}
    s = sessions["c0"]
    s.receive_shares({j: outbox[j]["c0"] for j in outbox if "c0" in outbox[j]})
    list(s.masked_input([np.zeros(2)], 1))
    first = s.unmask(ids)
    assert {share.kind for share in first} == {"self_mask"}
    with pytest.raises(SecAggAbort, match="once"):
        s.unmask(["c0", "c2", "c3", "c4"])  # a second ask, now calling c1 dropped


def test_a_client_refuses_a_roster_without_its_keys_and_tampered_shares():
    params = RoundParams("exp", 1, graph_seed=1, field=FieldParams(max_weight=10))
    ids = [f"c{i}" for i in range(4)]
    sessions = {i: ClientSession(i, params) for i in ids}
    roster = {i: s.advertise() for i, s in sessions.items()}
    other = dict(roster, c0=sessions["c1"].advertise())
    with pytest.raises(SecAggAbort, match="own keys"):
        sessions["c0"].share_keys(other)
    outbox = {i: sessions[i].share_keys(roster) for i in ids[1:]}
    inbox = {j: outbox[j]["c0"] for j in outbox}
    inbox["c1"] = inbox["c1"][:-1] + bytes([inbox["c1"][-1] ^ 1])
    sessions["c0"].share_keys(roster)
    with pytest.raises(SecAggAbort, match="authenticate"):
        sessions["c0"].receive_shares(inbox)


def test_bad_shares_are_detected_when_a_mask_key_is_rebuilt():
    params = RoundParams("exp", 1, graph_seed=1, field=FieldParams(max_weight=10))
    ids = [f"c{i}" for i in range(5)]
    sessions = {i: ClientSession(i, params) for i in ids}
    roster = {i: s.advertise() for i, s in sessions.items()}
    outbox = {i: s.share_keys(roster) for i, s in sessions.items()}
    survivors = ids[1:]
    for i in survivors:
        sessions[i].receive_shares({j: outbox[j][i] for j in outbox if i in outbox[j]})
        list(sessions[i].masked_input([np.zeros(2)], 1))
    revealed = {i: sessions[i].unmask(survivors) for i in survivors}
    revealed = {
        i: [Share(s.owner, s.kind, shamir.to_bytes(1)) if s.kind == "mask_key" else s for s in shares]
        for i, shares in revealed.items()
    }
    with pytest.raises(InconsistentShares):
        reconstruct_secrets(params, roster, ids, survivors, revealed, 2)


def test_mask_blocks_are_one_stream_whatever_the_cut():
    seed = bytes(range(32))
    whole = crypto.mask_block(seed, 0, 101)
    pieces = np.concatenate([crypto.mask_block(seed, s, min(7, 101 - s)) for s in range(0, 101, 7)])
    np.testing.assert_array_equal(whole, pieces)
    assert not np.array_equal(whole, crypto.mask_block(bytes(32), 0, 101))


def test_the_neighbour_graph_is_symmetric_regular_and_seeded():
    ids = [f"c{i}" for i in range(30)]
    graph = neighbour_graph(ids, 6, seed=9)
    assert all(len(v) == 6 and i not in v for i, v in graph.items())
    assert all(i in graph[j] for i, v in graph.items() for j in v)
    assert graph == neighbour_graph(list(reversed(ids)), 6, seed=9)
    assert graph != neighbour_graph(ids, 6, seed=10)
    assert neighbour_graph(ids[:5], 6, seed=9)["c0"] == frozenset(ids[1:5])


def test_field_capacity_and_encoding_limits():
    field = FieldParams(bits=24, max_weight=2**20)
    assert field.capacity() >= 2**19
    assert field.capacity() * field.max_weight * field.levels < 2**64
    with pytest.raises(ValueError, match="weight"):
        Quantizer(field, 2**20 + 1)
    with pytest.raises(ValueError, match="NaN"):
        Quantizer(field, 1).encode(np.array([np.nan]))
    clipped = Quantizer(FieldParams(clip=1.0, bits=8, stochastic=False), 1).encode(np.array([-5.0, 5.0]))
    assert clipped.tolist() == [0, 255]
    assert RoundParams.from_json(RoundParams("e", 2, 3, field=field).as_json()) == RoundParams(
        "e", 2, 3, field=field
    )


@pytest.mark.parametrize(
    ("kind", "value", "says"),
    [
        ("self_mask", b"\x01" * 24, "66 bytes"),
        ("mask_key", b"\xff" * 66, "field"),
        ("seed", b"\x01" * 66, "kind"),
    ],
)
def test_a_malformed_share_cannot_be_made(kind, value, says):
    with pytest.raises(ValueError, match=says):
        Share("client", kind, value)


def test_a_low_order_public_key_cannot_be_advertised():
    usable = crypto.public_bytes(crypto.new_private_key())
    with pytest.raises(ValueError, match="not a usable X25519 key"):
        PublicKeys(bytes(32), usable)
