"""fma_aggregator.config: settings from the environment, refused with a message when malformed."""

from __future__ import annotations

import pytest

from fma_aggregator.config import AggregatorConfig, runner_name
from fma_core.errors import ConfigurationError


def test_defaults_are_for_one_machine():
    config = AggregatorConfig.from_env({})
    assert config.broker_url == "redis://127.0.0.1:6379/0"
    assert config.result_backend == config.broker_url  # Redis keeps the task results too
    assert config.shard_bytes is None
    assert config.lease_seconds == 900
    assert config.queue == "fma"


def test_rabbitmq_has_no_result_backend_unless_one_is_named():
    rabbit = {"FMA_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}
    assert AggregatorConfig.from_env(rabbit).result_backend is None
    named = AggregatorConfig.from_env({**rabbit, "FMA_RESULT_BACKEND": "redis://127.0.0.1:6379/1"})
    assert named.result_backend == "redis://127.0.0.1:6379/1"


def test_numbers_are_parsed_and_nonsense_is_refused():
    config = AggregatorConfig.from_env({"FMA_SHARD_BYTES": "1048576", "FMA_LEASE_SECONDS": "30"})
    assert (config.shard_bytes, config.lease_seconds) == (1048576, 30)
    with pytest.raises(ConfigurationError, match="FMA_LEASE_SECONDS must be a number, not 'soon'"):
        AggregatorConfig.from_env({"FMA_LEASE_SECONDS": "soon"})
    with pytest.raises(ConfigurationError, match="FMA_SHARD_BYTES must be positive"):
        AggregatorConfig.from_env({"FMA_SHARD_BYTES": "-1"})


def test_the_runner_comes_from_the_django_setting(settings):
    settings.FMA_AGGREGATOR_RUNNER = "celery"
    assert runner_name() == "celery"
    settings.FMA_AGGREGATOR_RUNNER = "kubernetes"
    with pytest.raises(ConfigurationError, match="must be one of inprocess, celery, lambda, none"):
        runner_name()
