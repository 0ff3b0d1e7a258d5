"""How well each aggregation strategy learns the quickstart's task, against centralized training.

The quickstart's task (``examples/quickstart``: scikit-learn digits, 25 % held out for testing, the
rest split across 10 clients by Dirichlet(α) over labels, softmax regression, 5 local epochs of SGD
at learning rate 0.5 per round, 30 rounds), for α = 0.5 and α = 0.1 and every strategy:

1. tuning: each strategy's parameters (a small grid, e.g. ``server_learning_rate``) are chosen on a
   validation split carved from the training data (20 %, stratified; the clients share the other
   80 %), by the mean final validation accuracy over both α and ``--tune-seeds`` seeds. The test
   set is never looked at while tuning;
2. evaluation: with the chosen parameters, the full training data split across the clients as the
   quickstart splits it, over ``--seeds`` seeds (the seed picks the test split, the client split,
   the initial model and the clients' shuffling, as ``run.py --seed`` does): the final test
   accuracy as mean ± sd over the seeds, and the rounds until the global model first reaches 90 %
   test accuracy (mean over the seeds that reach it; "n/k" when only n of k do);
3. centralized: the same model trained on the pooled training data of the same split, for as many
   epochs as a client trains in all the rounds (rounds × local epochs), as the quickstart reports it.

The rounds run in this process through the service's own round engine (``fma_core.rounds.RoundEngine``
over ``InMemoryMetadataStore`` and ``LocalDirectoryWeightStore`` in a temporary directory), with the
clients training in the same process with the quickstart's own code (``local_training.py``), from
the same random streams as its client processes. One row (fedavg, α = 0.5, the first seed) then runs
through the live service, ``examples/quickstart/run.py`` with its client processes and HTTP, and the
benchmark reports both runs' per-round test accuracy and fails if they differ by more than
``--live-tolerance`` (``--no-live`` skips it).

    python benchmarks/learning.py [--quick] [--json] [--seeds 5] [--tune-seeds 2] [--rounds 30] [--no-live]

``--quick``: 1 seed, 1 tuning seed, the first value of each grid only, no live row (for the smoke
test; its numbers are not the README's).

Under attack, the same task at α = 0.5 with 15 clients (so that Bulyan, n ≥ 4f + 3, tolerates f = 3),
K of them bad (``local_training.attacked_update``, as ``client.py --attack``: ``noise`` pushes random
weights, ``signflip`` the update's change reversed), each strategy's final test accuracy (mean ± sd
over the seeds) against a clean run of the same rounds (fedavg, no bad client), with the gap in points:

    python benchmarks/learning.py --attacks [--seeds 3] [--scenarios noise:2 noise:3 signflip:2]
        [--strategies fedavg median trimmed_mean fedavg+clip fedavg+refuse ...]

A strategy is any registered aggregator's name (or ``multi_krum``: Krum averaging the n − f
best-scored updates), with ``+clip`` or ``+refuse`` for the adaptive norm bound (``fma_core.norms``'
defaults) after it; its parameters are the quickstart's for K bad clients (``run.aggregator_params``:
Krum and Bulyan tolerate f = K), not tuned.

With differential privacy (``fma_core.privacy``), the same task split across ``--clients`` (100)
clients at α = 0.5, every client every round, fedavg through the same round engine (its clipping and
its keyed noise, exactly as the service runs them), adaptive clipping (Andrew et al.'s defaults:
initial bound 0.1, median target, learning rate 0.2, count noise m / 20, or z where z needs more:
2σ_b must exceed z), the noise multiplier
calibrated so that the accountant's ε after the last round is at most each ``--epsilons`` at δ = 1e-5;
each row's final test accuracy (mean ± sd over the seeds) against the same run without DP:

    python benchmarks/learning.py --privacy [--seeds 3] [--clients 100] [--rounds 30] [--epsilons 8 2]
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"
sys.path.insert(0, str(QUICKSTART))

import digits  # noqa: E402 - the quickstart's modules, from its folder
import run as quickstart  # noqa: E402
import softmax  # noqa: E402
from fma_core.aggregators import available  # noqa: E402
from fma_core.connectors import ExperimentConfig, InMemoryMetadataStore, LocalDirectoryWeightStore  # noqa: E402
from fma_core.privacy import epsilon_spent  # noqa: E402
from fma_core.rounds import RoundEngine  # noqa: E402
from fma_core.weights import load, to_bytes  # noqa: E402
from local_training import ATTACKS, attacked_update, client_rng, data_name, local_update  # noqa: E402

ALPHAS = (0.5, 0.1)
TARGET = 0.9
EXPERIMENT = "learning"


def grid(**values: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the values, the first one first (the strategy's own default, when tuning
    ties)."""
    names = list(values)
    return [dict(zip(names, combination, strict=True)) for combination in itertools.product(*values.values())]


# Strategies and the parameters tuned for each, their built-in defaults first; a strategy this build
# does not have is left out.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "fedavg": [{}],
    "mean": [{}],
    "median": [{}],
    "trimmed_mean": grid(trim_fraction=(0.1, 0.2, 0.3)),
    "fedavgm": grid(server_learning_rate=(1.0, 0.5), momentum=(0.9, 0.7, 0.5)),
    "fedadam": grid(server_learning_rate=(0.1, 0.3, 0.03), tau=(1e-9, 1e-3)),
    "fedyogi": grid(server_learning_rate=(0.01, 0.03, 0.1, 0.3), tau=(1e-3, 1e-9)),
    "fedadagrad": grid(server_learning_rate=(0.1, 0.3, 1.0, 3.0, 0.03), tau=(1e-9, 1e-3)),
}


QUICKSTART_DEFAULTS = quickstart.parse([])


@dataclass(frozen=True)
class Setting:
    """The quickstart's training settings: ``run.py``'s defaults."""

    clients: int = QUICKSTART_DEFAULTS.clients
    rounds: int = QUICKSTART_DEFAULTS.rounds
    epochs: int = QUICKSTART_DEFAULTS.epochs
    lr: float = QUICKSTART_DEFAULTS.lr


@dataclass(frozen=True)
class Task:
    """Who holds which training examples, and the examples a run is scored on."""

    x_train: np.ndarray
    y_train: np.ndarray
    parts: list[np.ndarray]
    x_score: np.ndarray
    y_score: np.ndarray


@dataclass
class Row:
    strategy: str
    alpha: float
    params: dict[str, Any]
    final: list[float] = field(default_factory=list)  # test accuracy after the last round, per seed
    rounds_to_target: list[int | None] = field(default_factory=list)  # per seed; None: never reached

    def summary(self) -> dict[str, Any]:
        reached = [r for r in self.rounds_to_target if r is not None]
        return {
            "strategy": self.strategy,
            "alpha": self.alpha,
            "params": self.params,
            "mean": statistics.fmean(self.final),
            "sd": statistics.stdev(self.final) if len(self.final) > 1 else 0.0,
            "final": self.final,
            "rounds_to_90": statistics.fmean(reached) if reached else None,
            "reached_90": f"{len(reached)}/{len(self.rounds_to_target)}" if self.rounds_to_target else None,
        }


def held_out_task(seed: int, alpha: float, clients: int) -> Task:
    """The quickstart's own split for ``seed``: clients share the training data, scored on the test set."""
    split = digits.load(seed)
    parts = digits.dirichlet_partition(split.y_train, clients=clients, alpha=alpha, seed=seed)
    return Task(split.x_train, split.y_train, parts, split.x_test, split.y_test)


def validation_task(seed: int, alpha: float, clients: int) -> Task:
    """Tuning's split: 20 % of the training data held out for scoring; the test set is not used."""
    from sklearn.model_selection import train_test_split

    split = digits.load(seed)
    x_train, x_val, y_train, y_val = train_test_split(
        split.x_train, split.y_train, test_size=0.2, random_state=seed, stratify=split.y_train
    )
    parts = digits.dirichlet_partition(y_train, clients=clients, alpha=alpha, seed=seed)
    return Task(x_train, y_train, parts, x_val, y_val)


def federate(
    task: Task,
    strategy: str,
    params: Mapping[str, Any],
    setting: Setting,
    seed: int,
    *,
    attacks: Mapping[int, str] | None = None,
    update_norm: Mapping[str, Any] | None = None,
    privacy: Mapping[str, Any] | None = None,
    reports: list[Mapping[str, Any]] | None = None,
) -> list[float]:
    """The global model's accuracy on the task's scoring set after each round: the clients train in
    this process, the rounds go through the round engine as the service runs them. ``attacks``: the
    bad clients (by index) and what each pushes instead of its update (``local_training.attacked_update``,
    as the quickstart's ``client.py --attack``); ``update_norm``: the experiment's norm bound; ``privacy``:
    its differential privacy (each round's report is appended to ``reports``)."""
    attacks = attacks or {}
    root = Path(tempfile.mkdtemp(prefix="fma-learning-"))
    try:
        store = LocalDirectoryWeightStore(root)
        metadata = InMemoryMetadataStore()
        initial = softmax.initial_weights(seed)
        initial_key = store.put("artifacts/initial.safetensors", io.BytesIO(to_bytes(initial))).key
        clients = [data_name(index) for index in range(setting.clients)]
        config = ExperimentConfig(
            EXPERIMENT,
            aggregator=strategy,
            aggregator_params=dict(params),
            round_policy={"policy": "all_clients"},
            update_norm=update_norm,
            privacy=privacy,
        )
        metadata.create_experiment(config, clients=clients, initial_weights_key=initial_key)
        engine = RoundEngine(metadata, store, worker_id="benchmark", threads=1)
        rngs = [client_rng(seed, name) for name in clients]
        model, accuracies = initial, []
        for round_number in range(setting.rounds):
            for index, (client, part, rng) in enumerate(zip(clients, task.parts, rngs, strict=True)):
                data = (softmax, model, task.x_train[part], task.y_train[part])
                training = {"epochs": setting.epochs, "learning_rate": setting.lr, "rng": rng}
                if index in attacks:
                    update = attacked_update(attacks[index], *data, **training)
                else:
                    update = local_update(*data, **training)
                stored = store.put(
                    f"updates/{round_number}/{client}.safetensors", io.BytesIO(to_bytes(update))
                )
                metadata.add_update(
                    EXPERIMENT,
                    client_id=client,
                    weights_key=stored.key,
                    content_id=stored.sha256,
                    num_examples=len(part),
                    base_round=round_number,
                )
            outcome = engine.run_round(EXPERIMENT)
            if outcome.status != "committed":
                raise RuntimeError(f"{strategy} round {round_number + 1}: {outcome.status}, {outcome.reason}")
            if reports is not None:
                reports.append(outcome.aggregate.draft.report)
            with store.open(outcome.aggregate.draft.weights_key) as stream:
                model = load(stream)
            accuracies.append(softmax.accuracy(model, task.x_score, task.y_score))
        return accuracies
    finally:
        shutil.rmtree(root, ignore_errors=True)


def first_round_at(accuracies: Sequence[float], target: float) -> int | None:
    return next((index + 1 for index, value in enumerate(accuracies) if value >= target), None)


def tune(
    strategy: str, candidates: list[dict[str, Any]], setting: Setting, seeds: Sequence[int], say: Callable
) -> tuple[dict[str, Any], dict[str, float]]:
    """The candidate with the best mean final validation accuracy over both α and the tuning seeds."""
    scores: dict[str, float] = {}
    for params in candidates:
        finals = [
            federate(validation_task(seed, alpha, setting.clients), strategy, params, setting, seed)[-1]
            for alpha in ALPHAS
            for seed in seeds
        ]
        scores[json.dumps(params)] = statistics.fmean(finals)
    best = max(candidates, key=lambda params: scores[json.dumps(params)])  # the first of equals
    if len(candidates) > 1:
        say(f"  {strategy}: " + ", ".join(f"{key} → {score:.1%}" for key, score in scores.items()))
    return best, scores


def centralized(setting: Setting, alpha: float, seeds: Sequence[int]) -> Row:
    """Softmax regression on the pooled training data, as the quickstart's comparison trains it."""
    row = Row("centralized", alpha, {"epochs": setting.rounds * setting.epochs})
    for seed in seeds:
        task = held_out_task(seed, alpha, setting.clients)
        weights = softmax.train(
            softmax.initial_weights(seed),
            task.x_train,
            task.y_train,
            epochs=setting.rounds * setting.epochs,
            learning_rate=setting.lr,
            seed=seed,
        )
        row.final.append(softmax.accuracy(weights, task.x_score, task.y_score))
    return row


def live_row(setting: Setting, seed: int, alpha: float) -> list[float]:
    """Per-round test accuracy of fedavg through the live service: the quickstart itself, its client
    processes pushing over HTTP, the same seed and split."""
    out = Path(tempfile.mkdtemp(prefix="fma-learning-live-"))
    try:
        command = [
            sys.executable,
            str(QUICKSTART / "run.py"),
            "--aggregator", "fedavg",
            "--alpha", str(alpha),
            "--seed", str(seed),
            "--clients", str(setting.clients),
            "--rounds", str(setting.rounds),
            "--epochs", str(setting.epochs),
            "--lr", str(setting.lr),
            "--out", str(out),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"the quickstart failed:\n{done.stdout}\n{done.stderr}")
        with (out / "rounds.csv").open() as file:
            rows = list(csv.DictReader(file))
        return [float(row["test_accuracy"]) for row in rows[1:]]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def percent(value: float) -> str:
    return f"{value * 100:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per strategy, per α the mean ± sd final test accuracy and rounds to 90 %."""
    by_strategy: dict[str, dict[float, dict[str, Any]]] = {}
    for row in rows:
        by_strategy.setdefault(row["strategy"], {})[row["alpha"]] = row
    header = [
        "strategy",
        *(f"α={a} test accuracy (%)" for a in ALPHAS),
        *(f"α={a} rounds to 90 %" for a in ALPHAS),
    ]
    lines = ["| " + " | ".join([*header, "parameters (tuned on validation)"]) + " |"]
    lines.append("|" + "---|" * (len(header) + 1))
    for strategy, cells in by_strategy.items():
        accuracy = [f"{percent(cells[a]['mean'])} ± {percent(cells[a]['sd'])}" for a in ALPHAS]
        rounds = []
        for a in ALPHAS:
            cell = cells[a]
            if cell["reached_90"] is None:  # centralized: no rounds
                rounds.append("–")
            elif cell["rounds_to_90"] is None:
                rounds.append(f"never ({cell['reached_90']})")
            else:
                count, total = cell["reached_90"].split("/")
                rounds.append(
                    f"{cell['rounds_to_90']:.1f}" + ("" if count == total else f" ({cell['reached_90']})")
                )
        params = cells[ALPHAS[0]]["params"]
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "–"
        lines.append("| " + " | ".join([strategy, *accuracy, *rounds, shown]) + " |")
    return "\n".join(lines)


# Under attack (``--attacks``): the quickstart's task at α = 0.5 with bad clients, every strategy against a
# clean run (fedavg, no bad client) of the same rounds.
ATTACK_CLIENTS = 15  # so that Bulyan (n ≥ 4f + 3) tolerates f = 3
ATTACK_ALPHA = 0.5
SCENARIOS = ("noise:2", "noise:3", "signflip:2")
ATTACK_STRATEGIES = (
    "fedavg",
    "median",
    "trimmed_mean",
    "fedavg+clip",
    "fedavg+refuse",
    "trimmed_mean+refuse",
    "krum",
    "multi_krum",
    "bulyan",
)
# "<aggregator>+clip" / "+refuse": the aggregator behind an adaptive norm bound, its defaults (fma_core.norms)
NORM_BOUNDS = {"clip": {"mode": "clip", "adaptive": {}}, "refuse": {"mode": "refuse", "adaptive": {}}}


# "multi_krum": Krum averaging the n − f best-scored updates (Blanchard et al.'s Multi-Krum, its m = n − f)
VARIANTS = {"multi_krum": "krum"}


def strategy_parts(name: str) -> tuple[str, dict[str, Any] | None]:
    """``"fedavg+clip"`` → the aggregator ``fedavg`` and the experiment's ``update_norm``."""
    aggregator, _, bound = name.partition("+")
    if bound and bound not in NORM_BOUNDS:
        raise SystemExit(f"{name}: a norm bound is +{' or +'.join(NORM_BOUNDS)}")
    return VARIANTS.get(aggregator, aggregator), NORM_BOUNDS.get(bound)


def strategy_params(strategy: str, clients: int, bad: int) -> dict[str, Any]:
    """The quickstart's parameters for that many bad clients (``run.aggregator_params``), and a variant's."""
    aggregator, _ = strategy_parts(strategy)
    params = quickstart.aggregator_params(aggregator, clients, bad)
    if strategy.partition("+")[0] == "multi_krum":
        params["m"] = clients - params["f"]
    return params


def scenario(text: str) -> tuple[str, int]:
    attack, _, count = text.partition(":")
    if attack not in ATTACKS or not count.isdigit():
        raise SystemExit(f"a scenario is ATTACK:COUNT with ATTACK one of {', '.join(ATTACKS)}, not {text!r}")
    return attack, int(count)


def under_attack(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Final test accuracy (mean ± sd over the seeds) of each strategy in each scenario, and of the clean
    run; each strategy's parameters are the quickstart's for that many bad clients
    (``run.aggregator_params``: trimmed mean trims their share at each end), never tuned on the test set."""
    setting = Setting(clients=ATTACK_CLIENTS, rounds=args.rounds)
    seeds = list(range(args.seeds))
    scenarios = [scenario(text) for text in args.scenarios]
    have = set(available())
    wanted = args.strategies or list(ATTACK_STRATEGIES)
    strategies = [s for s in wanted if strategy_parts(s)[0] in have]
    missing = sorted(set(wanted) - set(strategies))
    if missing:
        say(f"not in this build, left out: {', '.join(missing)}")

    def finals(aggregator: str, params: dict, bound: dict | None, bad: dict[int, str]) -> list[float]:
        return [
            federate(
                held_out_task(seed, ATTACK_ALPHA, setting.clients),
                aggregator,
                params,
                setting,
                seed,
                attacks=bad,
                update_norm=bound,
            )[-1]
            for seed in seeds
        ]

    clean = finals("fedavg", {}, None, {})
    say(f"clean (fedavg, no bad client): {percent(statistics.fmean(clean))} %")
    rows = []
    for strategy in strategies:
        aggregator, bound = strategy_parts(strategy)
        for attack, count in scenarios:
            bad = {index: attack for index in range(setting.clients - count, setting.clients)}
            params = strategy_params(strategy, setting.clients, count)
            final = finals(aggregator, params, bound, bad)
            mean = statistics.fmean(final)
            rows.append(
                {
                    "strategy": strategy,
                    "scenario": f"{attack}:{count}",
                    "params": params,
                    "update_norm": bound,
                    "final": final,
                    "mean": mean,
                    "sd": statistics.stdev(final) if len(final) > 1 else 0.0,
                    "points_below_clean": (statistics.fmean(clean) - mean) * 100,
                }
            )
            say(
                f"  {strategy:20s} {count} {attack}: {percent(mean)} % ({rows[-1]['points_below_clean']:+.1f} below clean)"
            )
    best = {
        text: min((r for r in rows if r["scenario"] == text), key=lambda r: r["points_below_clean"])
        for text in args.scenarios
        if any(r["scenario"] == text for r in rows)
    }
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "setting": {**asdict(setting), "alpha": ATTACK_ALPHA},
        "seeds": seeds,
        "clean": {
            "final": clean,
            "mean": statistics.fmean(clean),
            "sd": statistics.stdev(clean) if len(clean) > 1 else 0.0,
        },
        "rows": rows,
        "best": {
            text: {"strategy": r["strategy"], "points_below_clean": r["points_below_clean"]}
            for text, r in best.items()
        },
        "left_out": missing,
    }


PRIVACY_ALPHA = 0.5
DELTA = 1e-5


def noise_for(epsilon: float, rounds: int, delta: float = DELTA) -> float:
    """The smallest noise multiplier (to 0.1 %) whose ε after ``rounds`` rounds is at most ``epsilon``."""
    low, high = 0.1, 1000.0
    while high / low > 1.001:
        middle = (low * high) ** 0.5
        low, high = (middle, high) if epsilon_spent(middle, rounds, delta) > epsilon else (low, middle)
    return high


def with_privacy(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Final test accuracy (mean ± sd over the seeds) without DP and at each ε, the ε the ledger recorded."""
    setting = Setting(clients=args.clients, rounds=args.rounds)
    seeds = list(range(args.seeds))

    def run(privacy: dict[str, Any] | None) -> dict[str, Any]:
        finals, spent = [], []
        for seed in seeds:
            reports: list[Mapping[str, Any]] = []
            task = held_out_task(seed, PRIVACY_ALPHA, setting.clients)
            finals.append(federate(task, "fedavg", {}, setting, seed, privacy=privacy, reports=reports)[-1])
            spent.append(reports[-1].get("privacy", {}).get("epsilon", 0.0))
        return {
            "privacy": privacy,
            "final": finals,
            "mean": statistics.fmean(finals),
            "sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "epsilon_spent": max(spent),
        }

    rows = [{"target_epsilon": None, **run(None)}]
    say(f"  without DP: {percent(rows[0]['mean'])} ± {percent(rows[0]['sd'])} %")
    for epsilon in args.epsilons:
        z = noise_for(epsilon, setting.rounds)
        privacy = {
            "clip": {
                "adaptive": {
                    "initial": 0.1,
                    "target_quantile": 0.5,
                    "learning_rate": 0.2,
                    "count_stddev": max(setting.clients / 20, z),  # the paper's m / 20, or enough for z
                }
            },
            "noise_multiplier": z,
            "expected_clients": setting.clients,
            "epsilon": epsilon,
            "delta": DELTA,
        }
        row = {"target_epsilon": epsilon, **run(privacy)}
        row["points_below_without"] = (rows[0]["mean"] - row["mean"]) * 100
        rows.append(row)
        say(
            f"  ε ≤ {epsilon:g} (z = {z:.3f}, spent {row['epsilon_spent']:.3f}): "
            f"{percent(row['mean'])} ± {percent(row['sd'])} % ({row['points_below_without']:+.1f} below)"
        )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "setting": {**asdict(setting), "alpha": PRIVACY_ALPHA, "delta": DELTA},
        "seeds": seeds,
        "rows": rows,
    }


def privacy_table(result: dict[str, Any]) -> str:
    setting = result["setting"]
    lines = [
        "| run | noise multiplier z | ε spent (δ = 1e-5) | final test accuracy | points below no DP |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row["privacy"] is None:
            lines.append(
                f"| fedavg, no DP, {setting['clients']} clients | – | – | {percent(row['mean'])} ± {percent(row['sd'])} % | – |"
            )
            continue
        lines.append(
            f"| fedavg, DP ε ≤ {row['target_epsilon']:g}, adaptive clip | {row['privacy']['noise_multiplier']:.3f} "
            f"| {row['epsilon_spent']:.3f} | {percent(row['mean'])} ± {percent(row['sd'])} % "
            f"| {row['points_below_without']:.1f} |"
        )
    return "\n".join(lines)


def scenario_main(
    args: argparse.Namespace,
    heading: str,
    run: Callable[[argparse.Namespace, Callable[[str], None]], dict[str, Any]],
    render: Callable[[dict[str, Any]], list[str]],
) -> dict[str, Any]:
    """One of the scenario tables (``--privacy``, ``--attacks``): progress on stderr with ``--json``,
    then the JSON, or the table's lines and the time it took."""
    if args.quick:
        args.seeds = 1

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    started = time.monotonic()
    say(heading)
    result = run(args, say)
    result["seconds"] = time.monotonic() - started
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print()
    for line in render(result):
        print(line)
    print(f"elapsed: {result['seconds']:.0f} s")
    return result


def privacy_main(args: argparse.Namespace) -> dict[str, Any]:
    """``--privacy``: the table with differential privacy against the same run without it."""
    heading = (
        f"differential privacy: {args.clients} clients, α={PRIVACY_ALPHA}, {args.rounds} rounds, "
        f"seeds 0–{args.seeds - 1 if not args.quick else 0}, δ = {DELTA:g}:"
    )
    return scenario_main(args, heading, with_privacy, lambda result: [privacy_table(result)])


def _params(rows: Sequence[dict[str, Any]]) -> str:
    """A strategy's parameters over its scenarios, each value once ("trim_fraction=0.167 / 0.233")."""
    values: dict[str, dict[str, None]] = {}
    for row in rows:
        for name, value in row["params"].items():
            values.setdefault(name, {})[f"{value:.3g}" if isinstance(value, float) else str(value)] = None
    shown = [f"{name}={' / '.join(each)}" for name, each in values.items()]
    if rows[0]["update_norm"]:
        shown.append(f"update_norm={json.dumps(rows[0]['update_norm'])}")
    return ", ".join(shown)


def attack_table(result: dict[str, Any]) -> str:
    """Markdown: one line per strategy, per scenario its mean ± sd final test accuracy and its gap to
    the clean run; the clean run last."""
    scenarios = list(dict.fromkeys(r["scenario"] for r in result["rows"]))
    names = {"noise": "pushing noise", "signflip": "flipping their sign"}

    def title(text: str) -> str:
        attack, count = scenario(text)
        return f"{count} {names[attack]}: accuracy (%), points below clean"

    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for row in result["rows"]:
        cells.setdefault(row["strategy"], {})[row["scenario"]] = row
    lines = ["| " + " | ".join(["strategy", *map(title, scenarios), "parameters"]) + " |"]
    lines.append("|" + "---|" * (len(scenarios) + 2))
    for strategy, by_scenario in cells.items():
        shown = [
            f"{percent(c['mean'])} ± {percent(c['sd'])}, {c['points_below_clean']:.1f}" if c else "–"
            for c in (by_scenario.get(text) for text in scenarios)
        ]
        params = _params(list(by_scenario.values()))
        lines.append("| " + " | ".join([strategy, *shown, params or "–"]) + " |")
    clean = result["clean"]
    lines.append(
        "| "
        + " | ".join(
            [
                "clean run (fedavg, no bad client)",
                *[f"{percent(clean['mean'])} ± {percent(clean['sd'])}"] * len(scenarios),
                "–",
            ]
        )
        + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds (0, 1, ...)")
    parser.add_argument("--tune-seeds", type=int, default=2, help="tuning seeds, after the evaluation ones")
    parser.add_argument("--rounds", type=int, default=Setting.rounds)
    parser.add_argument("--strategies", nargs="*", help="default: every one this build has")
    parser.add_argument("--quick", action="store_true", help="1 seed, no grid, no live row")
    parser.add_argument("--no-live", action="store_true", help="skip the row through the live service")
    parser.add_argument("--live-tolerance", type=float, default=0.01, help="largest per-round gap allowed")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument(
        "--attacks",
        action="store_true",
        help=f"under attack: {ATTACK_CLIENTS} clients, some bad (--scenarios), each strategy against a clean run",
    )
    parser.add_argument(
        "--scenarios",
        nargs="*",
        default=list(SCENARIOS),
        metavar="ATTACK:K",
        help="with --attacks: K bad clients",
    )
    parser.add_argument(
        "--privacy", action="store_true", help="with differential privacy, against the same run without"
    )
    parser.add_argument("--clients", type=int, default=100, help="with --privacy: the federation's size")
    parser.add_argument("--epsilons", type=float, nargs="*", default=[8.0, 2.0], help="with --privacy")
    args = parser.parse_args(argv)
    if args.attacks:
        return attacks_main(args)
    if args.privacy:
        return privacy_main(args)
    if args.quick:
        args.seeds, args.tune_seeds, args.no_live = 1, 1, True
    setting = Setting(rounds=args.rounds)
    have = set(available())
    strategies = [s for s in (args.strategies or GRIDS) if s in have]
    missing = sorted(set(args.strategies or GRIDS) - have)

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    started = time.monotonic()
    if missing:
        say(f"not in this build, left out: {', '.join(missing)}")
    seeds = list(range(args.seeds))
    tune_seeds = list(range(args.seeds, args.seeds + args.tune_seeds))  # never the evaluation seeds
    say(f"tuning on the validation split (seeds {tune_seeds}, α {', '.join(map(str, ALPHAS))}):")
    chosen: dict[str, dict[str, Any]] = {}
    tuning: dict[str, dict[str, float]] = {}
    for strategy in strategies:
        candidates = GRIDS.get(strategy, [{}])[: 1 if args.quick else None]
        chosen[strategy], tuning[strategy] = tune(strategy, candidates, setting, tune_seeds, say)
        score = tuning[strategy][json.dumps(chosen[strategy])]
        say(f"  {strategy}: chose {chosen[strategy] or 'its defaults'} ({score:.1%} on validation)")

    say(f"evaluating on the test set (seeds {seeds}):")
    rows: list[dict[str, Any]] = []
    for strategy in strategies:
        for alpha in ALPHAS:
            row = Row(strategy, alpha, chosen[strategy])
            for seed in seeds:
                accuracies = federate(
                    held_out_task(seed, alpha, setting.clients), strategy, row.params, setting, seed
                )
                row.final.append(accuracies[-1])
                row.rounds_to_target.append(first_round_at(accuracies, TARGET))
            rows.append(row.summary())
            say(f"  {strategy:12s} α={alpha}: {percent(rows[-1]['mean'])} ± {percent(rows[-1]['sd'])} %")
    rows.extend(centralized(setting, alpha, seeds).summary() for alpha in ALPHAS)

    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "setting": asdict(setting),
        "seeds": seeds,
        "tuning_seeds": tune_seeds,
        "rows": rows,
        "tuning": tuning,
        "left_out": missing,
    }
    federated = [r for r in rows if r["strategy"] != "centralized"]
    for alpha in ALPHAS:
        best = max((r for r in federated if r["alpha"] == alpha), key=lambda r: r["mean"], default=None)
        central = next(r for r in rows if r["strategy"] == "centralized" and r["alpha"] == alpha)
        if best is not None:
            result[f"best_at_{alpha}"] = {
                "strategy": best["strategy"],
                "points_below_centralized": (central["mean"] - best["mean"]) * 100,
            }

    if not args.no_live and "fedavg" in strategies:
        say("fedavg, α=0.5, seed 0 through the live service (examples/quickstart/run.py):")
        in_process = federate(held_out_task(0, 0.5, setting.clients), "fedavg", chosen["fedavg"], setting, 0)
        live = live_row(setting, 0, 0.5)
        gap = max(abs(a - b) for a, b in zip(in_process, live, strict=True))
        result["live"] = {"in_process": in_process, "service": live, "largest_gap": gap}
        say(
            f"  final: in process {percent(in_process[-1])} %, live service {percent(live[-1])} %; largest per-round gap {gap * 100:.2f} points"
        )
        if gap > args.live_tolerance:
            raise SystemExit(f"the live service and the in-process engine disagree by {gap * 100:.2f} points")
    result["seconds"] = time.monotonic() - started

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print()
        print(table(rows))
        for alpha in ALPHAS:
            if f"best_at_{alpha}" in result:
                best = result[f"best_at_{alpha}"]
                print(
                    f"α={alpha}: best {best['strategy']}, {best['points_below_centralized']:.1f} points below centralized"
                )
        print(f"elapsed: {result['seconds']:.0f} s")
    return result


def attacks_main(args: argparse.Namespace) -> dict[str, Any]:
    """``--attacks``: the table under attack, with the gap of each scenario's best strategy to the clean run."""
    heading = (
        f"under attack: {ATTACK_CLIENTS} clients, α={ATTACK_ALPHA}, {args.rounds} rounds, "
        f"seeds 0–{args.seeds - 1 if not args.quick else 0}:"
    )

    def render(result: dict[str, Any]) -> list[str]:
        return [
            attack_table(result),
            *(
                f"{text}: best {best['strategy']}, {best['points_below_clean']:.1f} points below the clean run"
                for text, best in result["best"].items()
            ),
        ]

    return scenario_main(args, heading, under_attack, render)


if __name__ == "__main__":
    main()
