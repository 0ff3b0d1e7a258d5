"""``fma_aggregator.readiness``: the broker is checked only where the runner is Celery, and a result is
kept ``FMA_READY_CACHE_SECONDS``, so a burst of probes costs the dependencies one round trip."""

from __future__ import annotations

from aggregator_support import HangingUp

from fma_aggregator.readiness import readiness


def test_the_broker_is_checked_for_celery_and_a_result_is_kept_for_its_period(
    settings, monkeypatch, transactional_db
):
    broker = HangingUp()  # accepts each connection and closes it: a broker that is down
    monkeypatch.setenv("FMA_BROKER_URL", broker.url.replace("http://", "redis://") + "/0")
    monkeypatch.setenv("FMA_BROKER_TIMEOUT", "2")
    try:
        settings.FMA_AGGREGATOR_RUNNER = "none"
        monkeypatch.setenv("FMA_READY_CACHE_SECONDS", "0")
        assert readiness().checks == {"database": "ok", "migrations": "ok", "weight_store": "ok"}

        settings.FMA_AGGREGATOR_RUNNER = "celery"
        monkeypatch.setenv("FMA_READY_CACHE_SECONDS", "3600")
        kept = readiness()
        assert kept.ready
        assert "broker" not in kept.checks
        assert broker.attempts == 0

        monkeypatch.setenv("FMA_READY_CACHE_SECONDS", "0")
        fresh = readiness()
        assert not fresh.ready
        assert fresh.checks["broker"].startswith("unavailable (")
        assert broker.attempts >= 1
    finally:
        broker.close()
