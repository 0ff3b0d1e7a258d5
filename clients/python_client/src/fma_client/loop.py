"""``train_loop``: a client that never waits for a round (an experiment with ``asynchronous`` rounds).

    def train(model: Model) -> Trained:
        ...train from model.weights...
        return Trained(weights, num_examples, metrics)

    result = train_loop(client, train, updates=100, seconds=3600, handle_signals=True)

Each turn pulls the latest model, trains from it and pushes the update, then starts again at once:
the server closes a round every K updates whatever model each was trained from, and discounts a
stale one. The loop stops after ``updates`` pushes, after ``seconds``, when ``stop`` is set, or (with
``handle_signals``) on SIGINT or SIGTERM, always between two turns, never inside a push. It goes on
through what a long-running client meets: a refusal as not selected (a synchronous experiment that
samples clients: it waits as the server says, as ``Client`` does), and a server or network that
fails for a while (it waits and tries again, and a push retried keeps its idempotency key, so the
server counts that update once). An experiment that has ended (finished, stopped, its budget spent)
ends the loop quietly (``stopped == "ended"``). Any other error (a refusal of the update, a revoked
credential) ends the loop: retrying cannot fix it.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from fma_client.client import ASK_AGAIN_SECONDS, Client, Model
from fma_client.errors import ConflictError, NotSelected, ServerUnavailable, TransferError

TRANSIENT_PAUSE_SECONDS = 5.0


class Trained(NamedTuple):
    """What one turn's training gives: the trained weights, how many examples, and metrics (optional)."""

    weights: Any
    num_examples: int
    metrics: Mapping[str, Any] | None = None


@dataclass
class LoopResult:
    """What a loop did: the ids of the updates it pushed, why it stopped, the transient failures it rode out."""

    updates: list[int] = field(default_factory=list)
    stopped: Literal["updates", "seconds", "stopped", "signal", "ended"] | None = None
    transient_failures: int = 0


def train_loop(
    client: Client,
    train: Callable[[Model], Trained | tuple[Any, int] | tuple[Any, int, Mapping[str, Any] | None]],
    *,
    updates: int | None = None,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    handle_signals: bool = False,
    transient_pause: float = TRANSIENT_PAUSE_SECONDS,
    max_transient: int | None = 20,
    on_push: Callable[[int, Model], None] | None = None,
) -> LoopResult:
    """Pull, train, push, repeat, until ``updates`` pushes, ``seconds`` have passed, ``stop`` is set or a
    signal arrives (``handle_signals``: SIGINT and SIGTERM, in the main thread; the previous handlers are
    put back when the loop ends). ``max_transient`` consecutive transient failures (None: no limit) end it
    with the last one raised. ``on_push(update_id, model)`` is called after each accepted push."""
    if updates is not None and updates < 0:
        raise ValueError(f"updates must be at least 0, not {updates}")
    stop = stop or threading.Event()
    result = LoopResult()
    deadline = None if seconds is None else time.monotonic() + seconds
    signalled: list[int] = []
    with _stopping_on_signals(stop, signalled) if handle_signals else _nothing():
        failures = 0
        key: str | None = None  # one key per update, kept across retries of its push
        trained: Trained | None = None
        model: Model | None = None
        while True:
            if stop.is_set():
                result.stopped = "signal" if signalled else "stopped"
                return result
            if updates is not None and len(result.updates) >= updates:
                result.stopped = "updates"
                return result
            if deadline is not None and time.monotonic() >= deadline:
                result.stopped = "seconds"
                return result
            try:
                if trained is None:
                    model = client.pull()
                    trained = Trained(*train(model))
                    key = uuid.uuid4().hex
                assert model is not None
                update = client.push(
                    trained.weights,
                    trained.num_examples,
                    trained.metrics,
                    base_aggregate=model.aggregate,
                    idempotency_key=key,
                )
            except NotSelected as error:
                # a synchronous, sampled experiment: this turn's model is no longer wanted, pull again later
                trained = None
                stop.wait(error.retry_after if error.retry_after is not None else ASK_AGAIN_SECONDS)
                continue
            except ConflictError as error:
                if error.code != "experiment_ended":
                    raise
                result.stopped = "ended"  # finished, stopped or out of budget: no update is wanted any more
                return result
            except (ServerUnavailable, TransferError):
                failures += 1
                result.transient_failures += 1
                if max_transient is not None and failures >= max_transient:
                    raise
                stop.wait(transient_pause)
                continue
            failures = 0
            trained = None
            result.updates.append(int(update["id"]))
            if on_push is not None:
                on_push(int(update["id"]), model)


@contextmanager
def _stopping_on_signals(stop: threading.Event, signalled: list[int]) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (the turn under way finishes first); the old handlers come back after."""

    def handler(number: int, frame: object) -> None:
        signalled.append(number)
        stop.set()

    previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


@contextmanager
def _nothing() -> Iterator[None]:
    yield
