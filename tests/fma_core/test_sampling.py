"""Per-round client sampling: configurations, a draw anyone can recompute, and uniform rounds.

The uniformity test is a chi-square goodness-of-fit test over many simulated rounds. Its seed is
fixed, so its outcome never changes from run to run; its threshold is a p-value of 1e-6, so a
correct sampler would fail it for at most one seed in a million, and the same test refuses a
sampler biased by a few percent (``test_the_uniformity_test_refuses_a_biased_draw``).
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from fma_core.errors import ConfigurationError
from fma_core.sampling import ClientSampling, check_for_privacy, draw, sampling_from_config

CLIENTS = [f"client-{i:02d}" for i in range(6)]
ROUNDS = 30_000
P_MIN = 1e-6  # the chance that a uniform sampler fails this test for a seed picked at random


def subset_counts(select) -> Counter:
    return Counter(select(r) for r in range(1, ROUNDS + 1))


def uniform_p_value(counts: Counter, k: int) -> float:
    subsets = [tuple(s) for s in itertools.combinations(sorted(CLIENTS), k)]
    observed = [counts.get(s, 0) for s in subsets]
    assert sum(observed) == ROUNDS  # every draw is a k-subset of the clients
    return chisquare(observed).pvalue  # expected: the same count for each of the C(6, k) subsets


def test_each_round_draws_a_uniform_subset_of_the_enrolled_clients():
    sampling = ClientSampling(seed=20261206, clients=2)
    counts = subset_counts(lambda r: draw(sampling, r, CLIENTS))
    assert uniform_p_value(counts, 2) > P_MIN


def test_a_fraction_draws_uniformly_too():
    sampling = ClientSampling(seed=7, fraction=0.5)  # 3 of 6
    counts = subset_counts(lambda r: draw(sampling, r, CLIENTS))
    assert uniform_p_value(counts, 3) > P_MIN


def test_the_uniformity_test_refuses_a_biased_draw():
    """The test has the power to fail: a draw that favours one client a little is caught."""
    sampling = ClientSampling(seed=20261206, clients=2)
    rng = np.random.default_rng(1)

    def biased(r: int) -> tuple[str, ...]:
        chosen = draw(sampling, r, CLIENTS)
        if (
            "client-00" not in chosen and rng.random() < 0.05
        ):  # client-00 gets 5% of other rounds' first place
            chosen = tuple(sorted(["client-00", chosen[1]]))
        return chosen

    assert uniform_p_value(subset_counts(biased), 2) < P_MIN


def test_a_draw_is_a_function_of_the_seed_the_round_and_the_clients():
    sampling = ClientSampling(seed=42, clients=3)
    first = draw(sampling, 5, CLIENTS)
    assert draw(sampling, 5, list(reversed(CLIENTS))) == first  # the enrolment order does not matter
    assert draw(ClientSampling(seed=42, clients=3), 5, CLIENTS) == first
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([42, 5])))
    assert first == tuple(sorted(np.array(CLIENTS)[rng.permutation(6)][:3]))  # the documented recipe
    rounds = {draw(sampling, r, CLIENTS) for r in range(1, 30)}
    seeds = {draw(ClientSampling(seed=s, clients=3), 5, CLIENTS) for s in range(30)}
    assert len(rounds) > 5
    assert len(seeds) > 5


def test_sizes():
    assert ClientSampling(seed=1, clients=10).size(4) == 4  # fewer enrolled than asked: all of them
    assert ClientSampling(seed=1, fraction=0.1).size(95) == 10  # rounded up
    assert ClientSampling(seed=1, fraction=0.1, min_clients=3).size(20) == 3
    assert ClientSampling(seed=1, fraction=0.1, min_clients=3).size(2) == 2
    assert draw(ClientSampling(seed=1, clients=3), 1, []) == ()


def test_longest_waiting_takes_those_who_waited_longest_and_breaks_ties_by_the_draw():
    sampling = ClientSampling(seed=3, clients=2, mode="longest_waiting")
    last = {"client-00": 4, "client-01": 4, "client-02": 2, "client-03": 3, "client-04": 4, "client-05": 1}
    assert draw(sampling, 5, CLIENTS, last) == ("client-02", "client-05")
    never = {client: 4 for client in CLIENTS[:3]}  # three never took part: two of them, by the draw
    chosen = {draw(sampling, r, CLIENTS, never) for r in range(1, 40)}
    assert all(set(c) <= set(CLIENTS[3:]) for c in chosen)
    assert len(chosen) == 3  # every pair of the three, depending on the round's draw
    uniform = draw(ClientSampling(seed=3, clients=2), 5, CLIENTS, last)
    assert uniform == draw(ClientSampling(seed=3, clients=2), 5, CLIENTS)  # uniform ignores history


def test_a_configuration_keeps_its_seed_or_gets_one():
    made = sampling_from_config({"fraction": 0.25})
    assert 0 <= made.seed < 2**63
    assert made.to_config() == {"fraction": 0.25, "min_clients": 1, "seed": made.seed, "mode": "uniform"}
    assert sampling_from_config(made.to_config()) == made
    assert sampling_from_config({"clients": 3, "seed": 9}).to_config() == {
        "clients": 3,
        "seed": 9,
        "mode": "uniform",
    }
    assert sampling_from_config(None) is None


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({}, "either 'clients' or 'fraction'"),
        ({"clients": 2, "fraction": 0.5}, "either 'clients' or 'fraction'"),
        ({"clients": 0}, "'clients' must be a whole number of at least 1"),
        ({"clients": 2.5}, "'clients' must be a whole number"),
        ({"clients": True}, "'clients' must be a whole number"),
        ({"fraction": 0}, "'fraction' must be in (0, 1]"),
        ({"fraction": 1.5}, "'fraction' must be in (0, 1]"),
        ({"fraction": float("nan")}, "'fraction' must be in (0, 1]"),
        ({"fraction": "0.5"}, "'fraction' must be in (0, 1]"),
        ({"clients": 2, "min_clients": 1}, "'min_clients' goes with 'fraction'"),
        ({"fraction": 0.5, "min_clients": 0}, "'min_clients' must be a whole number"),
        ({"clients": 2, "seed": -1}, "'seed' must be a whole number from 0"),
        ({"clients": 2, "seed": 2**63}, "'seed' must be a whole number from 0"),
        ({"clients": 2, "seed": "7"}, "'seed' must be a whole number"),
        ({"clients": 2, "mode": "fastest"}, "unknown mode 'fastest'"),
        ({"clients": 2, "fraction_fit": 0.1}, "does not take ['fraction_fit']"),
        ([10], "client_sampling is an object"),
    ],
)
def test_bad_configurations_are_refused_saying_what_is_wrong(config, says):
    with pytest.raises(ConfigurationError, match=None) as refused:
        sampling_from_config(config)
    assert says in str(refused.value)


def test_longest_waiting_is_refused_where_privacy_needs_uniform_rounds():
    check_for_privacy(None)
    check_for_privacy(ClientSampling(seed=1, clients=2))
    with pytest.raises(ConfigurationError, match="not usable with differential privacy"):
        check_for_privacy(ClientSampling(seed=1, clients=2, mode="longest_waiting"))
