"""fma_aggregator.announcer: the caller never waits on the send, a message queued while another one is
being sent is sent once, and an outage is logged once, not once per message."""

from __future__ import annotations

import logging
import threading

from aggregator_support import wait_for

from fma_aggregator.announcer import Announcer


class Broker:
    """Stands in for the Celery broker (``fma_aggregator.celery.publish``): it can hang or be down."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.down = False
        self.release = threading.Event()
        self.release.set()
        self.waiting = threading.Event()

    def send(self, task: str, argument: str) -> None:
        self.waiting.set()
        self.release.wait()
        if self.down:
            raise ConnectionError("connection refused")
        self.sent.append((task, argument))


def test_announcing_never_waits_on_a_hung_broker_and_repeats_are_sent_once():
    broker = Broker()
    broker.release.clear()  # the broker hangs
    announcer = Announcer(broker.send)
    announcer.announce("fma.run_round", "1")
    wait_for(broker.waiting.is_set, what="the first message to reach the broker")
    for _ in range(100):  # the caller goes on while the first send hangs
        announcer.announce("fma.run_round", "2")
    announcer.announce("fma.check_upload", "u")
    broker.release.set()
    wait_for(lambda: len(broker.sent) == 3, what="the queued messages")
    assert broker.sent == [("fma.run_round", "1"), ("fma.run_round", "2"), ("fma.check_upload", "u")]


def test_an_outage_is_logged_once_and_its_end_too(caplog):
    broker = Broker()
    broker.down = True
    announcer = Announcer(broker.send)
    with caplog.at_level(logging.DEBUG, logger="fma_aggregator.announcer"):
        for experiment in ("1", "2", "3"):
            announcer.announce("fma.run_round", experiment)
        wait_for(lambda: len(caplog.records) == 3, what="three failed sends")
        broker.down = False
        announcer.announce("fma.run_round", "4")
        wait_for(lambda: broker.sent, what="the send after the outage")
        wait_for(lambda: len(caplog.records) == 4, what="the end of the outage in the log")
    levels = [record.levelname for record in caplog.records]
    assert levels == ["WARNING", "DEBUG", "DEBUG", "INFO"]
    assert "the sweep will find it" in caplog.records[0].getMessage()
