"""FMA quickstart: federated training of a real model, end to end, on the embedded default.

    python examples/quickstart/run.py [--clients 10] [--rounds 30] [--alpha 0.5]
        [--aggregator fedavg|trimmed_mean|median|mean|fedavgm|fedadam|fedyogi|fedadagrad]
        [--aggregator-params JSON] [--bad-clients 0] [--attack noise|signflip] [--update-norm JSON]
        [--async [--buffer K] [--staleness fedbuff|constant|JSON]] [--slow N [--slow-factor 5]]
        [--seed 0] [--secure-aggregation]

``--async``: asynchronous rounds (the experiment's ``asynchronous`` setting): each client pulls the
newest model, trains, pushes and starts again at once (``fma_client.train_loop``), never waiting for a
round; a round closes every ``--buffer`` updates, each discounted by its staleness. ``--slow N``: the
last N clients take ``--slow-factor`` times as long as their training does (they sleep the rest), in
either mode: compare ``--slow 5`` with ``--async --slow 5``.

What it does, all on this machine with nothing else installed or running:

1. starts the real service (``python -m fma_service``: uvicorn, SQLite, a local weight directory,
   the in-process aggregation runner) on a free loopback port, in a temporary data directory;
2. creates a developer account, logs in through the API and creates the experiment with
   fma-client's ``Developer`` (the initial model, the aggregator, and the round policy "every
   enrolled client has pushed, or 30 s after the round's first update": a slow or crashed client
   cannot stall training);
3. issues one enrollment token per client and starts each client as its own process
   (``client.py``): it enrolls, then pulls, trains on its own non-IID slice of the data and
   pushes, round after round;
4. follows the rounds through the API, downloads each new aggregate, measures it on the held-out
   test set (accuracy and loss, one line per round) and reports that to the service as the
   developer's evaluation of the aggregate (``Developer.report_evaluation``: the dashboard charts
   it), trains the same model centrally on the pooled data for comparison, prints the table and
   writes ``accuracy.png`` and ``rounds.csv`` in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from digits import dirichlet_partition, load, save_slice
from fma_client import Developer, Experiment, read_file, write_file
from local_service import USERNAME, Service
from local_training import ATTACKS, data_name

HERE = Path(__file__).resolve().parent
AGGREGATORS = (
    "fedavg",
    "trimmed_mean",
    "median",
    "mean",
    "krum",
    "bulyan",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
)


@dataclass
class Row:
    round: int
    participants: int
    accuracy: float
    loss: float
    seconds: float


# The held-out metrics the experiment declares; the orchestrator reports them for each aggregate.
EVALUATION = {"metrics": {"accuracy": {"goal": "max"}, "loss": {"goal": "min"}}}


def parse(argv: list[str] | None, defaults: dict[str, Any] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Federated training of a real model against a real FMA service, end to end.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=10, help="data holders, one process each")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet α of the non-IID split")
    parser.add_argument("--aggregator", choices=AGGREGATORS, default="fedavg")
    parser.add_argument(
        "--aggregator-params",
        type=json.loads,
        default={},
        metavar="JSON",
        help="the aggregator's parameters, e.g. '{\"server_learning_rate\": 0.5}' for a server optimizer",
    )
    parser.add_argument("--bad-clients", type=int, default=0, help="clients that push an attack")
    parser.add_argument("--attack", choices=ATTACKS, default="noise", help="what the bad clients push")
    parser.add_argument(
        "--update-norm",
        type=json.loads,
        metavar="JSON",
        help="the experiment's bound on each update's change, e.g. "
        '\'{"mode": "clip", "adaptive": {"multiplier": 3}}\' (see fma_core.norms)',
    )
    parser.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="asynchronous rounds: clients never wait; a round every --buffer updates",
    )
    parser.add_argument(
        "--buffer", type=int, help="--async: updates a round takes (default: half the clients)"
    )
    parser.add_argument(
        "--staleness",
        type=staleness_arg,
        default={"function": "fedbuff"},
        metavar="NAME|JSON",
        help="--async: the staleness discount, fedbuff or constant, or JSON such as "
        """'{"function": "polynomial", "a": 0.5}' (see fma_core.asynchronous)""",
    )
    parser.add_argument("--slow", type=int, default=0, help="the last N clients are slow")
    parser.add_argument(
        "--slow-factor",
        type=float,
        default=5.0,
        help="a slow client's turn takes this many times its training",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=0.5, help="learning rate of local SGD")
    parser.add_argument(
        "--deadline", type=float, default=30.0, help="seconds after a round's first update to close it"
    )
    parser.add_argument("--out", type=Path, default=Path("out/quickstart"), help="table and plot go here")
    parser.add_argument("--model", default="softmax", help="module with the model (see softmax.py)")
    parser.add_argument("--keep-data", action="store_true", help="keep the service's data directory")
    parser.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="SecAgg+: the server sees only the sum of the updates (docs/secure_aggregation.md)",
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep the service running at the end, until Ctrl-C"
    )
    if defaults:
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1:
        parser.error("--clients and --rounds must be at least 1")
    if not isinstance(args.aggregator_params, dict):
        parser.error("--aggregator-params must be a JSON object of parameter names to values")
    if args.update_norm is not None and not isinstance(args.update_norm, dict):
        parser.error('--update-norm must be a JSON object, e.g. \'{"mode": "clip", "bound": 5}\'')
    if not 0 <= args.bad_clients < args.clients:
        parser.error("--bad-clients must be between 0 and --clients - 1")
    if not 0 <= args.slow <= args.clients or args.slow_factor < 1:
        parser.error("--slow must be between 0 and --clients, --slow-factor at least 1")
    if args.buffer is None:
        args.buffer = max(1, args.clients // 2)
    if args.buffer < 1:
        parser.error("--buffer must be at least 1")
    return args


def staleness_arg(text: str) -> dict[str, Any]:
    """``fedbuff``, ``constant`` or a JSON object (``{"function": "hinge", "a": 10, "b": 4}``)."""
    if text in ("fedbuff", "constant"):
        return {"function": text}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a staleness is fedbuff, constant or a JSON object")
    return value


def aggregator_params(name: str, clients: int, bad: int) -> dict[str, Any]:
    """Trimmed mean cuts at least the bad clients' share at each end (10 % when there are none); Krum and
    Bulyan tolerate the bad clients (at least one), as many as the clients allow (n ≥ 2f + 3, n ≥ 4f + 3)."""
    if name == "trimmed_mean":
        return {"trim_fraction": min(0.49, max(0.1, (bad + 0.5) / clients))}
    if name in ("krum", "bulyan"):
        return {"f": min(max(bad, 1), (clients - 3) // (2 if name == "krum" else 4))}
    return {}


def fewest_updates(name: str, params: dict[str, Any]) -> int:
    """The fewest updates a round of the aggregator can use: what the round deadline must wait for
    (the service refuses a policy that could close a round with fewer)."""
    if name == "krum":
        return max(2 * params["f"] + 3, params.get("m", 1))
    if name == "bulyan":
        return 4 * params["f"] + 3
    return 1


class ClientProcess:
    """One data holder in its own process; its stdout lines (JSON events) are read by a thread."""

    def __init__(self, index: int, command: list[str], token: str, log_path: Path, pythonpath: str) -> None:
        self.index = index
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "FMA_ENROLLMENT_TOKEN": token, "PYTHONPATH": pythonpath},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.enrolled = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                self.events.append(event)
                if event.get("event") == "enrolled":
                    self.enrolled.set()

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def failed(self) -> bool:
        return self.process.poll() not in (None, 0)

    def error(self) -> str:
        """The last line the client wrote to stderr (its exception, if it died of one)."""
        self._log.flush()
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit code {self.process.returncode}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def follow_rounds(
    developer: Developer,
    experiment: int,
    model: ModuleType,
    x_test: Any,
    y_test: Any,
    *,
    rounds: int,
    clients: list[ClientProcess],
    scratch: Path,
    started: float,
    stall_seconds: float,
) -> list[Row]:
    """Poll the API for new aggregates; download each one, measure it on the held-out test set and
    report that to the service as the developer's evaluation of the aggregate (the dashboard charts
    it), printing a line per round."""
    rows: list[Row] = []
    seen: set[int] = set()
    last_time = started
    last_progress = time.monotonic()
    while len(rows) < rounds:
        fresh = [a for a in developer.aggregates(experiment) if a["id"] not in seen]
        for aggregate in sorted(fresh, key=lambda a: a["round_number"]):
            seen.add(aggregate["id"])
            detail = developer.aggregate(aggregate["id"])
            path = developer.download(
                experiment, scratch / f"{aggregate['id']}.safetensors", aggregate=aggregate["id"]
            )
            weights = read_file(path)
            accuracy, loss = model.accuracy(weights, x_test, y_test), model.loss(weights, x_test, y_test)
            developer.report_evaluation(
                experiment, aggregate["id"], {"accuracy": accuracy, "loss": loss}, num_examples=len(y_test)
            )
            now = time.monotonic()
            secure = (detail.get("report") or {}).get("secure_aggregation")  # no update is kept: count inputs
            participants = secure["stages"]["masked_input"] if secure else len(detail["updates"])
            row = Row(aggregate["round_number"], participants, accuracy, loss, now - last_time)
            last_time = last_progress = now
            rows.append(row)
            print(
                f"  round {row.round:3d}: {row.participants:2d} clients, test accuracy {row.accuracy:6.1%}, "
                f"loss {row.loss:.3f}  ({row.seconds:.1f} s)",
                flush=True,
            )
        if len(rows) >= rounds:
            break
        clients_gone = all(c.process.poll() is not None for c in clients)
        if clients_gone and not fresh and time.monotonic() - last_progress > 5:
            break  # every client has exited and no round is coming
        if time.monotonic() - last_progress > stall_seconds:
            print(f"  no round completed in {stall_seconds:.0f} s; stopping", flush=True)
            break
        time.sleep(0.2)
    return rows


def write_results(out: Path, rows: list[Row], initial: float, central: float, title: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "rounds.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["round", "participants", "test_accuracy", "test_loss", "seconds"])
        writer.writerow([0, 0, f"{initial:.4f}", "", ""])
        writer.writerows(
            [r.round, r.participants, f"{r.accuracy:.4f}", f"{r.loss:.4f}", f"{r.seconds:.2f}"] for r in rows
        )
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    axes.plot(
        [0, *(r.round for r in rows)],
        [initial, *(r.accuracy for r in rows)],
        marker="o",
        markersize=3,
        label="federated (FMA), global model",
    )
    axes.axhline(
        central, color="tab:orange", linestyle="--", label=f"centralized, pooled data ({central:.1%})"
    )
    axes.set(xlabel="round", ylabel="test accuracy", title=title, ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path = out / "accuracy.png"
    figure.savefig(path)
    plt.close(figure)
    return path


def percent(fraction: float) -> float:
    """A fraction as the percentage printed (one decimal), so that sums of printed values agree."""
    return float(f"{fraction * 100:.1f}")


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends the run as Ctrl-C does: ``main``'s ``finally`` stops the clients and the
    service (its own session, so the signal does not reach it) and removes the data directory."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    raise SystemExit(128 + signum)


def main(
    argv: list[str] | None = None,
    *,
    defaults: dict[str, Any] | None = None,
    model_dirs: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """Run the quickstart; returns its results (also for the tests). ``complete`` is false when
    some round did not complete or some client failed; the script then exits with status 1."""
    args = parse(argv, defaults)
    started = time.monotonic()
    for folder in (HERE, *model_dirs):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    # the client processes import the model module and digits.py from the same folders
    pythonpath = os.pathsep.join(
        [str(HERE), *map(str, model_dirs), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    data_dir = Path(tempfile.mkdtemp(prefix="fma-quickstart-"))
    service = Service(data_dir)
    try:
        print(
            f"Starting the FMA service (SQLite + local weights + in-process aggregator) in {data_dir}",
            flush=True,
        )
        service.launch()
        # while the server migrates and boots: the data and the model
        model = importlib.import_module(args.model)
        split = load(args.seed)
        initial_weights = model.initial_weights(args.seed)
        rows, failed = federate(args, service, model, split, initial_weights, started, pythonpath)
        results = report(args, rows, failed, model, split, initial_weights, started)
        if args.serve:
            print(f"The service keeps running at {service.url} (admin {service.url}admin/); Ctrl-C stops it.")
            with contextlib.suppress(KeyboardInterrupt):
                service.process.wait()
        return results
    finally:
        service.stop()
        if args.keep_data:
            print(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def federate(
    args: argparse.Namespace,
    service: Service,
    model: ModuleType,
    split: Any,
    initial_weights: dict[str, Any],
    started: float,
    pythonpath: str,
) -> tuple[list[Row], list[int]]:
    """Create the experiment on the launched service, run the clients and follow their rounds;
    returns the rounds and the clients that failed."""
    clients: list[ClientProcess] = []
    try:
        parts = dirichlet_partition(split.y_train, clients=args.clients, alpha=args.alpha, seed=args.seed)
        service.wait_ready()
        password = secrets.token_urlsafe(12)
        service.create_developer(password)
        if service.has_page("dashboard/"):  # served once the dashboard lands; not on every build
            print(f"  dashboard {service.url}dashboard/")
        print(f"  API       {service.url}api/v1/")
        print(f"  API docs  {service.url}api/docs/")
        print(f"  admin     {service.url}admin/   (user {USERNAME}, password {password})")
        print(f"  ready after {time.monotonic() - started:.1f} s", flush=True)

        developer = Developer.login(service.url, USERNAME, password, quiet=True)
        experiment = create_experiment(args, developer, service.data_dir, initial_weights)
        bad = set(range(args.clients - args.bad_clients, args.clients))
        print(
            f"Experiment {experiment.id}: {args.aggregator}, {args.clients} clients"
            + (f" ({len(bad)} pushing {args.attack})" if bad else "")
            + f", {args.rounds} rounds of {args.epochs} local epochs, Dirichlet α={args.alpha}; "
            f"examples per client: {', '.join(str(len(p)) for p in parts)}",
            flush=True,
        )
        start_clients(
            args,
            developer=developer,
            experiment=experiment.id,
            service=service,
            split=split,
            parts=parts,
            bad=bad,
            pythonpath=pythonpath,
            clients=clients,
        )
        print(
            f"{len(clients)} clients enrolled after {time.monotonic() - started:.1f} s; training:", flush=True
        )
        rounds_started = time.monotonic()
        for client in clients:
            client.go()

        rows = follow_rounds(
            developer,
            experiment.id,
            model,
            split.x_test,
            split.y_test,
            rounds=args.rounds,
            clients=clients,
            scratch=service.data_dir,
            started=rounds_started,
            stall_seconds=args.deadline * 4,
        )
        for client in clients:  # each exits after its last push (asynchronous: when its next push
            with contextlib.suppress(subprocess.TimeoutExpired):  # finds the experiment finished)
                client.process.wait(10)
        failed = [client.index for client in clients if client.failed()]
        for client in clients:
            if client.failed():
                print(f"  client {client.index} failed: {client.error()}", flush=True)
        ended = developer.experiment(experiment.id)  # finish_when: the round limit ends it
        print(
            f"Experiment {ended.id} is {ended.state}"
            + (f": {ended.state_reason}" if ended.state_reason else "")
        )
        developer.close()
        return rows, failed
    finally:
        for client in clients:
            client.stop()
        if not args.serve:
            service.stop()


def create_experiment(
    args: argparse.Namespace, developer: Developer, data_dir: Path, initial_weights: dict[str, Any]
) -> Experiment:
    """The experiment, through the API: the initial model, the aggregator, and the round policy
    "every enrolled client has pushed, or ``--deadline`` after the round's first update"; with
    ``--async``, a round every ``--buffer`` updates (or ``--deadline`` after its first)."""
    initial_path = data_dir / "initial.safetensors"
    write_file(initial_weights, initial_path)
    params = {**aggregator_params(args.aggregator, args.clients, args.bad_clients), **args.aggregator_params}
    deadline = {
        "policy": "deadline",
        "seconds": args.deadline,
        "min_updates": fewest_updates(args.aggregator, params),
    }
    config: dict[str, Any] = {
        "name": f"quickstart-digits-{args.model}",
        "description": "scikit-learn digits, non-IID across clients (examples/quickstart)",
        "aggregator": args.aggregator,
        "aggregator_params": params,
        "round_policy": {"any_of": [{"policy": "all_clients"}, deadline]},
        "update_norm": args.update_norm,
        "evaluation": EVALUATION,
        "finish_when": {"rounds": args.rounds},
        # weights of this model stay well inside ±8; 24 bits: steps of 1e-6; a stage waits --deadline at most
        **(
            {"secure_aggregation": {"clip": 8.0, "bits": 24, "stage_seconds": args.deadline}}
            if args.secure_aggregation
            else {}
        ),
        "initial_model": str(initial_path),
        "enrollment": "token",
    }
    if args.asynchronous:
        config |= {
            "round_policy": deadline,
            "asynchronous": {"buffer": args.buffer, "staleness": args.staleness},
        }
    return developer.create_experiment(config)


def start_clients(
    args: argparse.Namespace,
    *,
    developer: Developer,
    experiment: int,
    service: Service,
    split: Any,
    parts: list[Any],
    bad: set[int],
    pythonpath: str,
    clients: list[ClientProcess],
) -> None:
    """Start a process per client that has examples (into ``clients``, which the caller stops
    whatever happens) and wait until each has enrolled.

    A client whose slice of the data is empty (a skewed split, e.g. ``--alpha 0.1``) has nothing
    to train on or weigh an update by, so it sits out: it never enrolls, and the round policy
    "every enrolled client has pushed" counts only the clients that train.
    """
    empty = [index for index, part in enumerate(parts) if not len(part)]
    if empty:
        print(
            f"  client(s) {', '.join(map(str, empty))} got no examples: nothing to train on, so they sit "
            "out (never enroll; rounds wait only for the clients that train)",
            flush=True,
        )
    for index in (i for i in range(args.clients) if i not in empty):
        data_file = service.data_dir / data_name(index)
        save_slice(data_file, split.x_train[parts[index]], split.y_train[parts[index]])
        token = developer.issue_enrollment_token(experiment, max_uses=1).token
        command = [
            sys.executable,
            str(HERE / "client.py"),
            "--url", service.url,
            "--experiment", str(experiment),
            "--data", str(data_file),
            "--seed", str(args.seed),
            "--rounds", str(args.rounds),
            "--epochs", str(args.epochs),
            "--lr", str(args.lr),
            "--model", args.model,
            "--round-timeout", str(args.deadline * 4),
            "--slow-factor", str(args.slow_factor if index >= args.clients - args.slow else 1.0),
        ] + (["--attack", args.attack] if index in bad else []) + (["--async"] if args.asynchronous else [])  # fmt: skip
        log = service.data_dir / f"client-{index}.log"
        clients.append(ClientProcess(index, command, token, log, pythonpath))
    for client in clients:
        while not client.enrolled.wait(0.2):
            if client.process.poll() is not None:
                raise RuntimeError(f"client {client.index} exited before enrolling: {client.error()}")


def report(
    args: argparse.Namespace,
    rows: list[Row],
    failed: list[int],
    model: ModuleType,
    split: Any,
    initial_weights: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """Train centrally for comparison, print the table and the summary, write the CSV and the plot."""
    central_weights = model.train(
        initial_weights,
        split.x_train,
        split.y_train,
        epochs=args.rounds * args.epochs,
        learning_rate=args.lr,
        seed=args.seed,
    )
    central = model.accuracy(central_weights, split.x_test, split.y_test)
    initial = model.accuracy(initial_weights, split.x_test, split.y_test)

    print()
    print("round  clients  test accuracy  seconds")
    print(f"{0:5d}  {'-':>7}  {initial:13.1%}  {'':>7}   (initial model)")
    for row in rows:
        print(f"{row.round:5d}  {row.participants:7d}  {row.accuracy:13.1%}  {row.seconds:7.1f}")
    final = rows[-1].accuracy if rows else float("nan")
    done = f"{len(rows)} rounds" if len(rows) == args.rounds else f"{len(rows)} of {args.rounds} rounds"
    print()
    print(f"federated ({args.aggregator}, {done}):  {percent(final):.1f}%")
    print(f"centralized (pooled data, {args.rounds * args.epochs} epochs): {percent(central):.1f}%")
    print(f"gap: {percent(central) - percent(final):+.1f} points")
    title = f"{args.model} on digits: {args.clients} clients, α={args.alpha}, {args.aggregator}" + (
        f", {args.bad_clients} pushing {args.attack}" if args.bad_clients else ""
    )
    plot = write_results(args.out, rows, initial, central, title)
    print(f"table: {args.out / 'rounds.csv'}   plot: {plot}")
    elapsed = time.monotonic() - started
    print(f"elapsed: {elapsed:.1f} s", flush=True)
    complete = len(rows) == args.rounds and not failed
    if not complete:
        print(
            f"INCOMPLETE: {len(rows)} of {args.rounds} rounds completed"
            + (f"; client(s) {', '.join(map(str, failed))} failed" if failed else "")
            + " (their logs are client-N.log in the data directory; --keep-data keeps it)",
            file=sys.stderr,
            flush=True,
        )
    return {
        "rows": rows,
        "initial": initial,
        "central": central,
        "final": final,
        "elapsed": elapsed,
        "plot": plot,
        "failed_clients": failed,
        "complete": complete,
    }


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    sys.exit(0 if main()["complete"] else 1)
