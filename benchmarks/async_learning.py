"""Synchronous FedAvg against asynchronous (buffered) rounds when half of the clients are slow.

The quickstart's task (``benchmarks/learning.py``: scikit-learn digits, 25 % held out for testing, the
rest split across 10 clients by Dirichlet(α = 0.5) over labels, softmax regression, 5 local epochs of
SGD at learning rate 0.5 a turn), with clients 5 to 9 ``--slow-factor`` (5) times slower than clients
0 to 4. Time is simulated on a virtual clock, so the run is deterministic and the machine's load
does not matter: one time unit is one fast client's turn of local training; a slow client's takes
``--slow-factor`` units; pulls, pushes and rounds take none.

- sync: FedAvg with ``all_clients`` rounds, every client training from the current model each round:
  a round takes as long as the slowest client, ``--slow-factor`` units.
- async: the experiment's ``asynchronous`` setting (``fma_core.asynchronous``): each client pulls the
  newest model, trains, pushes and starts again at once; a round closes every K pushes (the K oldest
  pending), each change taken from its own base and discounted by s(τ).

Both run through the service's own round engine (``fma_core.rounds.RoundEngine`` over
``InMemoryMetadataStore`` and ``LocalDirectoryWeightStore``), with the clients' training from
``examples/quickstart/local_training.py`` and their random streams. Both get the same simulated time,
sync's ``--rounds`` rounds (30 × 5 = 150 units). Reported per mode, mean over ``--seeds`` seeds: the
simulated time until the global model first reaches 90 % test accuracy ("n/k" when only n seeds of
k do), the final test accuracy (mean ± sd), the rounds run, and the time to 90 % as a ratio to sync's.

    python benchmarks/async_learning.py [--seeds 3] [--rounds 30] [--slow-factor 5] [--json] [--quick]

``--quick``: 1 seed, 6 sync rounds (for the smoke test; its numbers are not the README's).
"""

from __future__ import annotations

import argparse
import heapq
import io
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import learning

from fma_core.connectors import ExperimentConfig, InMemoryMetadataStore, LocalDirectoryWeightStore
from fma_core.rounds import RoundEngine
from fma_core.weights import load, to_bytes
from local_training import client_rng, data_name, local_update

ALPHA = 0.5
TARGET = learning.TARGET
EXPERIMENT = "async-learning"

# The asynchronous settings compared with sync: the buffer K and the staleness discount (server learning
# rate 1, FedAvg's step when every update is fresh).
MODES: dict[str, dict[str, Any]] = {
    "async K=5, fedbuff": {"buffer": 5, "staleness": {"function": "fedbuff"}},
    "async K=5, constant": {"buffer": 5, "staleness": {"function": "constant"}},
    "async K=10, fedbuff": {"buffer": 10, "staleness": {"function": "fedbuff"}},
}


@dataclass
class Row:
    mode: str
    setting: Mapping[str, Any] | None
    final: list[float] = field(default_factory=list)
    time_to_target: list[float | None] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        reached = [t for t in self.time_to_target if t is not None]
        return {
            "mode": self.mode,
            "asynchronous": self.setting,
            "final": self.final,
            "mean": statistics.fmean(self.final),
            "sd": statistics.stdev(self.final) if len(self.final) > 1 else 0.0,
            "time_to_90": statistics.fmean(reached) if reached else None,
            "reached_90": f"{len(reached)}/{len(self.time_to_target)}",
            "rounds": statistics.fmean(self.rounds),
        }


def durations(clients: int, slow_factor: float) -> list[float]:
    """Each client's turn of local training in time units: the second half ``slow_factor`` times slower."""
    return [1.0 if index < clients // 2 else float(slow_factor) for index in range(clients)]


def sync_run(
    task: learning.Task, setting: learning.Setting, seed: int, slow_factor: float
) -> list[tuple[float, float]]:
    """(time, test accuracy) after each synchronous FedAvg round: a round lasts as long as the slowest client."""
    accuracies = learning.federate(task, "fedavg", {}, setting, seed)
    slowest = max(durations(setting.clients, slow_factor))
    return [(slowest * (number + 1), accuracy) for number, accuracy in enumerate(accuracies)]


class _Clock:
    """The virtual clock the in-memory store and the engine read (updates' arrival, deadlines)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def async_run(
    task: learning.Task,
    setting: learning.Setting,
    seed: int,
    slow_factor: float,
    asynchronous: Mapping[str, Any],
    until: float,
) -> list[tuple[float, float]]:
    """(time, test accuracy) after each asynchronous round until ``until``: every client trains from the
    newest model when it starts a turn, pushes when done, and starts again at once."""
    root = Path(tempfile.mkdtemp(prefix="fma-async-learning-"))
    try:
        clock = _Clock()
        store = LocalDirectoryWeightStore(root)
        metadata = InMemoryMetadataStore(clock=clock)
        initial = learning.softmax.initial_weights(seed)
        initial_key = store.put("artifacts/initial.safetensors", io.BytesIO(to_bytes(initial))).key
        names = [data_name(index) for index in range(setting.clients)]
        config = ExperimentConfig(EXPERIMENT, aggregator="fedavg", asynchronous=dict(asynchronous))
        metadata.create_experiment(config, clients=names, initial_weights_key=initial_key)
        engine = RoundEngine(metadata, store, worker_id="benchmark", threads=1, clock=clock)
        rngs = [client_rng(seed, name) for name in names]
        turn = durations(setting.clients, slow_factor)
        model, version = initial, 0  # the newest model and its round number
        started = {index: (model, version) for index in range(setting.clients)}
        # (finish time, client): ties go to the lower index, so the run is the same every time
        events = [(turn[index], index) for index in range(setting.clients)]
        heapq.heapify(events)
        history: list[tuple[float, float]] = []
        pushes = 0
        while events and events[0][0] <= until:
            now, index = heapq.heappop(events)
            clock.now = now
            base, base_round = started[index]
            part = task.parts[index]
            update = local_update(
                learning.softmax,
                base,
                task.x_train[part],
                task.y_train[part],
                epochs=setting.epochs,
                learning_rate=setting.lr,
                rng=rngs[index],
            )
            pushes += 1
            stored = store.put(f"updates/{pushes}.safetensors", io.BytesIO(to_bytes(update)))
            metadata.add_update(
                EXPERIMENT,
                client_id=names[index],
                weights_key=stored.key,
                content_id=stored.sha256,
                num_examples=len(part),
                base_round=base_round,
            )
            outcome = engine.run_round(EXPERIMENT)
            if outcome.status == "committed":
                with store.open(outcome.aggregate.draft.weights_key) as stream:
                    model = load(stream)
                version = outcome.aggregate.round_number
                history.append((now, learning.softmax.accuracy(model, task.x_score, task.y_score)))
            elif outcome.status != "not_ready":
                raise RuntimeError(f"async round at {now}: {outcome.status}, {outcome.reason}")
            started[index] = (model, version)
            heapq.heappush(events, (now + turn[index], index))
        return history
    finally:
        shutil.rmtree(root, ignore_errors=True)


def first_time_at(history: Sequence[tuple[float, float]], target: float) -> float | None:
    return next((time for time, accuracy in history if accuracy >= target), None)


def measure(args: argparse.Namespace, say) -> dict[str, Any]:
    setting = learning.Setting(rounds=args.rounds)
    seeds = list(range(args.seeds))
    slowest = max(durations(setting.clients, args.slow_factor))
    until = slowest * setting.rounds
    rows = {"sync fedavg": Row("sync fedavg", None)}
    rows |= {name: Row(name, mode) for name, mode in MODES.items()}
    for seed in seeds:
        task = learning.held_out_task(seed, ALPHA, setting.clients)
        histories = {"sync fedavg": sync_run(task, setting, seed, args.slow_factor)}
        for name, mode in MODES.items():
            histories[name] = async_run(task, setting, seed, args.slow_factor, mode, until)
        for name, history in histories.items():
            rows[name].final.append(history[-1][1])
            rows[name].time_to_target.append(first_time_at(history, TARGET))
            rows[name].rounds.append(len(history))
            say(
                f"seed {seed} {name:22s} final {learning.percent(history[-1][1])} %, to 90 %: {first_time_at(history, TARGET)}"
            )
    summaries = [row.summary() for row in rows.values()]
    base = summaries[0]["time_to_90"]
    for summary in summaries:
        time = summary["time_to_90"]
        summary["time_to_90_vs_sync"] = time / base if time is not None and base else None
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "setting": {
            "clients": setting.clients,
            "slow_clients": setting.clients - setting.clients // 2,
            "slow_factor": args.slow_factor,
            "alpha": ALPHA,
            "epochs": setting.epochs,
            "lr": setting.lr,
            "sync_rounds": setting.rounds,
            "time_budget": until,
        },
        "seeds": seeds,
        "rows": summaries,
    }


def table(result: dict[str, Any]) -> str:
    """Markdown: one line per mode: time to 90 % (and its ratio to sync), final accuracy, rounds run."""
    lines = [
        "| mode | simulated time to 90 % test accuracy (× sync) | final test accuracy (%) | rounds | asynchronous |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        count, total = row["reached_90"].split("/")
        if row["time_to_90"] is None:
            time = f"never ({row['reached_90']})"
        else:
            time = (
                f"{row['time_to_90']:.1f} (× {row['time_to_90_vs_sync']:.2f})"
                if row["time_to_90_vs_sync"]
                else f"{row['time_to_90']:.1f}"
            )
            time += "" if count == total else f" ({row['reached_90']})"
        accuracy = f"{learning.percent(row['mean'])} ± {learning.percent(row['sd'])}"
        setting = json.dumps(row["asynchronous"]) if row["asynchronous"] else "– (all_clients rounds)"
        lines.append(f"| {row['mode']} | {time} | {accuracy} | {row['rounds']:.0f} | {setting} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="evaluation seeds (0, 1, ...)")
    parser.add_argument(
        "--rounds", type=int, default=learning.Setting.rounds, help="sync rounds; the time budget"
    )
    parser.add_argument("--slow-factor", type=float, default=5.0, help="how much slower the slow half is")
    parser.add_argument("--quick", action="store_true", help="1 seed, 6 sync rounds")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds = 1, 6
    say = (lambda text: None) if args.json else print
    result = measure(args, say)
    print(json.dumps(result, indent=2) if args.json else "\n" + table(result))
    return result


if __name__ == "__main__":
    main()
