"""fma_core.policies: round policies are pure functions of plain data, parsed from JSON."""

from __future__ import annotations

import pytest

from fma_core.errors import ConfigurationError
from fma_core.policies import (
    AllClients,
    AllOf,
    AnyOf,
    Deadline,
    MinFraction,
    PendingUpdate,
    RequireXUpdates,
    RoundState,
    policy_from_config,
)


def state(*clients: str, enrolled=("a", "b", "c", "d"), first_at=100.0, now=100.0) -> RoundState:
    updates = tuple(PendingUpdate(c, first_at + i) for i, c in enumerate(clients))
    return RoundState(updates=updates, enrolled_clients=frozenset(enrolled), now=now)


def test_all_clients_needs_an_update_from_every_enrolled_client():
    assert not AllClients().is_ready(state("a", "b", "c"))
    assert AllClients().is_ready(state("a", "b", "c", "d"))
    assert not AllClients().is_ready(state(enrolled=()))  # no updates, no round


def test_require_x_updates_counts_updates_not_clients_like_the_original():
    assert RequireXUpdates(3).is_ready(state("a", "a", "a"))
    assert not RequireXUpdates(3).is_ready(state("a", "b"))


def test_min_fraction_counts_distinct_enrolled_clients():
    assert not MinFraction(0.5).is_ready(state("a", "a", "x"))
    assert MinFraction(0.5).is_ready(state("a", "b"))
    assert not MinFraction(0.5).is_ready(state("a", enrolled=()))


def test_deadline_closes_after_t_seconds_with_at_least_k_updates():
    policy = Deadline(60, min_updates=2)
    assert not policy.is_ready(state("a", "b", now=150))
    assert policy.is_ready(state("a", "b", now=160))
    assert not policy.is_ready(state("a", now=1000))
    assert policy.wakeup_at(state("a", "b")) == 160
    assert policy.wakeup_at(state("a")) is None


def test_policies_compose():
    everyone_or_deadline = AnyOf((AllClients(), Deadline(600, min_updates=2)))
    assert everyone_or_deadline.is_ready(state("a", "b", "c", "d"))
    assert not everyone_or_deadline.is_ready(state("a", "b", now=200))
    assert everyone_or_deadline.is_ready(state("a", "b", now=700))
    assert everyone_or_deadline.wakeup_at(state("a", "b")) == 700
    both = AllOf((RequireXUpdates(2), MinFraction(0.75)))
    assert not both.is_ready(state("a", "a"))
    assert both.is_ready(state("a", "b", "c"))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, RequireXUpdates(1)),
        ("all_clients", AllClients()),
        ({"policy": "require_x_updates", "x": 5}, RequireXUpdates(5)),
        ({"requirement": "require_x_updates", "requirement_args": [5]}, RequireXUpdates(5)),
        ({"requirement": "all_clients"}, AllClients()),
        ({"policy": "min_fraction", "fraction": 0.5}, MinFraction(0.5)),
        (
            {"any_of": [{"policy": "all_clients"}, {"policy": "deadline", "seconds": 600, "min_updates": 3}]},
            AnyOf((AllClients(), Deadline(600, 3))),
        ),
    ],
)
def test_configs_parse_and_round_trip(config, expected):
    policy = policy_from_config(config)
    assert policy == expected
    assert policy_from_config(policy.to_config()) == policy


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"policy": "most_clients"}, "unknown round policy 'most_clients'"),
        ({"policy": "require_x_updates"}, "does not take"),
        ({"policy": "require_x_updates", "x": 0}, "at least 1"),
        ({"policy": "require_x_updates", "x": 2.5}, "whole number"),
        ({"policy": "min_fraction", "fraction": 1.5}, r"in \(0, 1\]"),
        ({"policy": "deadline", "seconds": -1}, "non-negative"),
        ({"any_of": []}, "non-empty list"),
        ({"any_of": [{"policy": "all_clients"}], "x": 1}, "and nothing else"),
        ({"requirement": "require_x_updates", "requirement_args": []}, "not one the original FMA defined"),
        ({"requirement": "bogus"}, "not one the original FMA defined"),
        (42, "a name or an object"),
    ],
)
def test_bad_configs_are_refused_with_a_reason(config, message):
    with pytest.raises(ConfigurationError, match=message):
        policy_from_config(config)


@pytest.mark.parametrize(
    ("config", "fewest"),
    [
        (None, 1),
        ({"policy": "require_x_updates", "x": 7}, 7),
        ({"policy": "deadline", "seconds": 60, "min_updates": 3}, 3),
        ("all_clients", None),  # as many as enroll
        ({"policy": "min_fraction", "fraction": 0.5}, None),
        ({"any_of": ["all_clients", {"policy": "deadline", "seconds": 9, "min_updates": 2}]}, 2),
        ({"any_of": ["all_clients", {"policy": "min_fraction", "fraction": 0.2}]}, None),
        ({"all_of": [{"policy": "require_x_updates", "x": 4}, {"policy": "deadline", "seconds": 1}]}, 4),
        ({"all_of": ["all_clients", {"policy": "require_x_updates", "x": 1}]}, None),
    ],
)
def test_the_fewest_updates_a_policy_can_close_a_round_with(config, fewest):
    assert policy_from_config(config).fewest_updates() == fewest


@pytest.mark.parametrize(
    ("config", "least"),
    [
        (None, 1),
        ({"policy": "require_x_updates", "x": 7}, 7),
        ({"policy": "deadline", "seconds": 60, "min_updates": 3}, 3),
        ("all_clients", 1),
        ({"policy": "min_fraction", "fraction": 0.5}, 1),
        (
            {
                "any_of": [
                    {"policy": "require_x_updates", "x": 5},
                    {"policy": "deadline", "seconds": 9, "min_updates": 2},
                ]
            },
            2,
        ),
        ({"any_of": ["all_clients", {"policy": "require_x_updates", "x": 5}]}, 1),  # two clients can close it
        ({"all_of": [{"policy": "require_x_updates", "x": 4}, {"policy": "deadline", "seconds": 1}]}, 4),
    ],
)
def test_below_its_least_updates_a_policy_is_not_ready_and_sets_no_wakeup(config, least):
    """The engine counts the pending updates instead of reading them below ``least_updates``: no state
    with fewer may be ready or name a time to wake up, however the clients and the clock stand."""
    policy = policy_from_config(config)
    assert policy.least_updates() == least
    for count in range(least):
        for enrolled in ((), ("a",), ("a", "b"), tuple("abcdefgh")):
            clients = tuple(enrolled[i % len(enrolled)] if enrolled else "a" for i in range(count))
            for now in (100.0, 10_000.0):
                below = state(*clients, enrolled=enrolled, now=now)
                assert not policy.is_ready(below), (count, enrolled, now)
                assert policy.wakeup_at(below) is None, (count, enrolled, now)
    clients = ("a",) * least
    assert policy.is_ready(state(*clients, enrolled=("a",), now=10_000.0))  # and with that many it can be
