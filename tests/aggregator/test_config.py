"""fma_aggregator.config: settings from the environment, refused with a message when malformed."""

from __future__ import annotations

import pytest

from fma_aggregator.config import AggregatorConfig, runner_name
from fma_core.errors import ConfigurationError


def test_defaults_are_for_one_machine():
    config = AggregatorConfig.from_env({})
    assert config.broker_url == "redis://127.0.0.1:6379/0"
    assert config.broker_timeout == 10
    assert config.shard_bytes is None
    assert config.lease_seconds == 900
    assert config.queue == "fma"


def test_no_result_backend_and_every_wait_on_the_broker_is_bounded():
    from fma_aggregator.celery import app, config

    assert app.conf.result_backend is None
    assert app.conf.task_ignore_result is True
    assert app.conf.broker_connection_timeout == config.broker_timeout
    if config.broker_url.startswith("redis"):
        options = app.conf.broker_transport_options
        assert options["socket_timeout"] == options["socket_connect_timeout"] == config.broker_timeout


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
