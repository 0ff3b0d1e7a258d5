"""The secure_aggregation setting and the settings it refuses (fma_core.secagg.config)."""

from __future__ import annotations

import pytest

from fma_core.errors import ConfigurationError
from fma_core.secagg.config import SecureAggregation, conflicts


def test_defaults_and_round_trip():
    parsed = SecureAggregation.from_config({})
    assert parsed.threshold == 0.6
    assert parsed.field.bits == 24
    assert SecureAggregation.from_config(parsed.to_config()) == parsed
    assert SecureAggregation.from_config(None) is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"threshold": 0.5}, "threshold"),
        ({"threshold": "0.7"}, "threshold"),
        ({"degree": 3}, "even"),
        ({"bits": 60}, "bits"),
        ({"clip": -1}, "clip"),
        ({"rounding": "up"}, "rounding"),
        ({"stage_seconds": 0}, "stage_seconds"),
        ({"stage_seconds": True}, "stage_seconds"),  # a boolean is no number of seconds
        ({"clip": "8"}, "clip"),  # nor is text
        ({"clip": 1e308}, "clip"),  # 2·clip overflows
        ({"clip": 1e-300}, "clip"),  # the scale overflows
        ({"bits": 20.5}, "bits"),
        ({"max_weight": True}, "max_weight"),
        ({"treshold": 0.7}, "unknown"),
        ([], "an object"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(config, message):
    with pytest.raises(ConfigurationError, match=message):
        SecureAggregation.from_config(config)


def test_only_sum_aggregators_and_no_per_update_rules_combine():
    assert conflicts(aggregator="fedavg") == []
    assert conflicts(aggregator="mean") == []
    for name in ("krum", "bulyan", "median", "trimmed_mean", "fedadam"):
        (message,) = conflicts(aggregator=name)
        assert message.startswith("aggregator:")
    found = conflicts(
        aggregator="median",
        update_norm={"mode": "clip", "bound": 1.0},
        legacy_mode=True,
        asynchronous={"buffer": 10},
        privacy={"epsilon": 1.0},
    )
    assert [m.split(":")[0] for m in found] == [
        "aggregator",
        "update_norm",
        "legacy_mode",
        "asynchronous",
        "privacy",
    ]
