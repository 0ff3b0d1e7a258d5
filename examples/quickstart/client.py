"""One data holder of the quickstart, run as its own process by ``run.py``.

Its data is its own file (``--data``, written by ``run.py`` from the non-IID split). It enrolls with the enrollment token it is given (environment ``FMA_ENROLLMENT_TOKEN``), tells
the orchestrator on stdout, waits for "go" on stdin (so that every client is enrolled before the
first round can close), then for each round: pull the global model, train on its own slice of
the data (which never leaves this process), push the update. A client with ``--attack noise`` pushes
random noise of the right shape instead, one with ``--attack signflip`` its update's change reversed,
to show what robust aggregators and norm bounds buy. With ``--async`` it never waits for a round: it
pulls the newest model, trains, pushes and starts again (``fma_client.train_loop``) until the experiment
finishes (its next push is refused as ended) or SIGTERM.
``--slow-factor F`` makes each turn last F times its training (it sleeps the rest): a slow site.

Stdout carries one JSON object per line for the orchestrator; human-readable errors go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from digits import load_slice
from fma_client import Client, ConflictError, Trained, train_loop
from local_training import ATTACKS, attacked_update, client_rng, local_update


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--experiment", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="this client's examples (.npz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--model", default="softmax", help="module with train() and accuracy()")
    parser.add_argument("--attack", choices=ATTACKS, help="push this attack instead of the update")
    parser.add_argument("--round-timeout", type=float, default=120.0)
    parser.add_argument("--async", dest="asynchronous", action="store_true", help="pull, train, push, repeat")
    parser.add_argument(
        "--slow-factor", type=float, default=1.0, help="a turn lasts this many times its training"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    model = importlib.import_module(args.model)
    x, y = load_slice(args.data)
    if not len(y):  # the service refuses an update that weighs nothing (num_examples ≥ 1)
        sys.exit(f"{args.data} holds no examples: nothing to train on, so this client does not take part")
    rng = client_rng(args.seed, args.data.name)

    client = Client.enroll(
        args.url, args.experiment, enrollment_token=os.environ["FMA_ENROLLMENT_TOKEN"], quiet=True
    )
    say("enrolled", client=client.uuid, examples=len(y))
    if sys.stdin.readline().strip() != "go":
        return  # the orchestrator gave up before the start

    def train(weights: dict) -> Trained:
        started = time.monotonic()
        training = {"epochs": args.epochs, "learning_rate": args.lr, "rng": rng}
        if args.attack:
            update = attacked_update(args.attack, model, weights, x, y, **training)
        else:
            update = local_update(model, weights, x, y, **training)
        time.sleep((args.slow_factor - 1) * (time.monotonic() - started))  # a slow site
        return Trained(update, len(y), {"train_accuracy": model.accuracy(update, x, y)})

    with client:
        if args.asynchronous:
            pushes = iter(range(1, 1 << 62))
            result = train_loop(
                client,
                lambda pulled: train(pulled.weights),
                handle_signals=True,
                on_push=lambda update, pulled: say(
                    "pushed", turn=next(pushes), update=update, base=pulled.aggregate
                ),
            )
            say("done", stopped=result.stopped, updates=len(result.updates))
            return
        weights, _ = client.pull()
        for round_index in range(args.rounds):
            trained = train(weights)
            try:
                pushed = client.push(
                    trained.weights, num_examples=trained.num_examples, metrics=trained.metrics
                )
            except ConflictError as error:
                if error.code != "experiment_ended":
                    raise
                break  # a late update after the last round: the experiment finished without it
            say("pushed", round=round_index + 1, update=pushed.get("id"))
            if round_index + 1 < args.rounds:
                weights, _ = client.wait_for_new_model(timeout=args.round_timeout, poll_interval=0.1)
    say("done")


if __name__ == "__main__":
    main()
