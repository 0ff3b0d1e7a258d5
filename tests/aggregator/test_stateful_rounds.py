"""A third party's stateful strategy (server momentum, with an initial model) over several rounds in every
runner, its processes SIGKILLed during a round and between rounds: the aggregates and the server
states are those of an uninterrupted run on the same updates, bit for bit.

The uninterrupted run is fma-core's engine on the in-memory metadata store and a local directory, one
round after the other in this process; its clients train each round from the previous round's model,
and the runs under test are sent exactly the same bytes, trained from the same round (their
``base_aggregate``). Content ids depend on bytes alone, so equal ids say equal aggregates and states,
and since each round's updates read their change from the previous aggregate and the momentum from
the previous state, a round that continued from anything else would differ from there on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from aggregator_support import HERE, celery_worker_args, service_available, use_lambda_api, wait_for, weights

from fma_aggregator import lambda_invoke
from fma_core.connectors import ExperimentConfig, InMemoryMetadataStore, LocalDirectoryWeightStore
from fma_core.rounds import RoundEngine
from fma_core.state import read_state
from fma_core.weights import TensorSpec, load, to_bytes
from fma_django import ingestion, services
from fma_django.models import Event, EventKind, ModelAggregate, ModelUpdate, RoundLease, UpdateStatus
from fma_django.storage import weight_store

pytestmark = pytest.mark.usefixtures("require_postgresql")

SHAPES = {"embedding": (64, 32), "hidden": (32, 32), "head": (32, 4), "bias": (4,)}  # 12.8 kB
SHARD_BYTES = "6000"  # three shards: the embedding cut in two, then the rest
PARAMS = {"server_learning_rate": 0.5, "momentum": 0.9}
# the third party's strategy (every runner), and a built-in server optimizer (in-process)
MOMENTUM = ("server_momentum", PARAMS)
FEDADAM = ("fedadam", {"server_learning_rate": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001})
LEASE = 4  # the workers' FMA_LEASE_SECONDS
ROUNDS = 3
POLICY = {"policy": "require_x_updates", "x": 3}
FUNCTION = "fma-aggregator"
LAMBDA_PROCESS = HERE.parent / "deploy" / "lambda_process.py"


@dataclass(frozen=True)
class Update:
    data: bytes
    num_examples: int


@dataclass(frozen=True)
class Round:
    """One round of the uninterrupted run: what was sent, and what it left."""

    updates: tuple[Update, ...]
    content_id: str
    state_content_id: str


def uninterrupted(root: Path, algorithm: tuple[str, dict]) -> list[Round]:
    """ROUNDS rounds of the algorithm in this process, each one's three clients trained from the
    previous round's model (the first from the initial model the experiments get)."""
    store = LocalDirectoryWeightStore(root)
    metadata = InMemoryMetadataStore()
    initial = store.put("artifacts/initial.safetensors", io.BytesIO(to_bytes(weights(0.0, SHAPES)))).key
    with store.open_weights(initial) as reader:
        spec = TensorSpec.from_reader(reader)
    name, params = algorithm
    config = ExperimentConfig("e", aggregator=name, aggregator_params=params, tensor_spec=spec)
    metadata.create_experiment(config, clients=("c0", "c1", "c2"), initial_weights_key=initial)
    rounds: list[Round] = []
    model_key = initial
    for number in range(1, ROUNDS + 1):
        with store.open(model_key) as stream:
            model = load(stream)
        updates = []
        for client in range(3):
            step = np.random.default_rng(100 * number + client)
            trained = {
                k: v + (0.1 * step.standard_normal(v.shape)).astype(np.float32) for k, v in model.items()
            }
            update = Update(to_bytes(trained), num_examples=client + 1)
            stored = store.put(f"updates/{number}-{client}.safetensors", io.BytesIO(update.data))
            metadata.add_update(
                "e",
                client_id=f"c{client}",
                weights_key=stored.key,
                content_id=stored.sha256,
                num_examples=update.num_examples,
                base_round=number - 1,
            )
            updates.append(update)
        outcome = RoundEngine(metadata, store, worker_id="uninterrupted", threads=1).run_round("e")
        assert outcome.status == "committed", outcome.reason
        draft = outcome.aggregate.draft
        rounds.append(Round(tuple(updates), draft.content_id, draft.state_content_id))
        model_key = draft.weights_key
    return rounds


@pytest.fixture
def algorithm(request) -> tuple[str, dict]:
    """The stateful algorithm the rounds run: the plugin's server momentum unless a test says otherwise."""
    return getattr(request, "param", MOMENTUM)


@pytest.fixture
def reference(plugin, tmp_path, algorithm) -> list[Round]:
    return uninterrupted(tmp_path / "uninterrupted", algorithm)


@pytest.fixture
def experiment(make_experiment, algorithm):
    name, params = algorithm
    return make_experiment(shapes=SHAPES, aggregator=name, aggregator_params=params, round_policy=POLICY)


@pytest.fixture
def env(worker_env, plugin) -> Callable[..., dict[str, str]]:
    """A worker's environment: the plugin installed, short leases, a sweep every second."""

    def make(**extra: str) -> dict[str, str]:
        base = worker_env(FMA_LEASE_SECONDS=str(LEASE))
        return {**base, "PYTHONPATH": f"{plugin}:{base['PYTHONPATH']}", **extra}

    return make


def pausing(
    env: Callable[..., dict[str, str]], tmp_path: Path, where: str, **extra: str
) -> tuple[dict[str, str], Path]:
    """The environment of a worker that stops at ``where`` (slow_store.PausingWeightStore), and its marker."""
    marker = tmp_path / f"reached-{where}-{len(list(tmp_path.glob('reached-*')))}"
    return (
        env(
            FMA_WEIGHT_STORE="slow_store.PausingWeightStore",
            FMA_TEST_PAUSE_AT=where,
            FMA_TEST_MARKER=str(marker),
            **extra,
        ),
        marker,
    )


def send_round(experiment, number: int, reference: list[Round]) -> None:
    """The round's three clients submit the uninterrupted run's updates, trained from the previous round."""
    base = ModelAggregate.objects.get(experiment=experiment, round_number=number - 1) if number > 1 else None
    for update in reference[number - 1].updates:
        client, _ = services.client_register(experiment=experiment)
        _, created = ingestion.update_submit(
            experiment=experiment,
            client=client,
            stream=io.BytesIO(update.data),
            num_examples=update.num_examples,
            base_aggregate_id=base.pk if base else None,
        )
        assert created


def waited(condition: Callable[[], object], what: str, log: Callable[[], str]) -> object:
    """``wait_for``, and on timeout the log of the process waited for, as it is then."""
    try:
        return wait_for(condition, what=what, timeout=180)
    except AssertionError as error:
        raise AssertionError(f"{error}; its log:\n{log()}") from None


def committed(experiment, number: int, log: Callable[[], str]) -> ModelAggregate:
    found = lambda: ModelAggregate.objects.filter(experiment=experiment, round_number=number).first()  # noqa: E731
    return waited(found, f"round {number} to be committed", log)


def assert_taken_over(experiment, number: int) -> None:
    """The round was started by the worker that was killed, then by the one that took it over."""
    starts = Event.objects.filter(experiment=experiment, kind=EventKind.ROUND_STARTED, detail__round=number)
    assert len({e.detail["worker"] for e in starts}) >= 2


def assert_as_uninterrupted(experiment, reference: list[Round], weights_dir: Path) -> None:
    """Each round's aggregate and state are the uninterrupted run's (recorded and as stored), each round
    continued from the one before, each update counted once, in its own round, and nothing else is
    left among the aggregates (what the killed claims wrote was removed when their rounds were taken over)."""
    aggregates = list(ModelAggregate.objects.filter(experiment=experiment).order_by("round_number"))
    assert [(a.round_number, a.content_id, a.state_content_id) for a in aggregates] == [
        (number, r.content_id, r.state_content_id) for number, r in enumerate(reference, 1)
    ]
    store = weight_store()
    parent = None
    for number, aggregate in enumerate(aggregates, 1):
        for key, expected in (
            (aggregate.weights_key, aggregate.content_id),
            (aggregate.state_key, aggregate.state_content_id),
        ):
            with store.open(key) as stream:
                assert hashlib.file_digest(stream, "sha256").hexdigest() == expected
        state = read_state(aggregate.state_key, store.open_weights)
        assert (state.algorithm, state.scalars) == (experiment.aggregator, {"rounds": number})
        assert aggregate.parent_id == (parent.pk if parent else None)
        assert sorted(aggregate.updates.values_list("num_examples", flat=True)) == [1, 2, 3]
        parent = aggregate
    updates = ModelUpdate.objects.filter(experiment=experiment)
    assert {u.status for u in updates} == {UpdateStatus.CONSUMED}
    assert updates.count() == 3 * ROUNDS
    folder = weights_dir / "aggregates" / str(experiment.pk)
    assert {f"aggregates/{experiment.pk}/{f.name}" for f in folder.iterdir()} == {
        key for a in aggregates for key in (a.weights_key, a.state_key)
    }


# In-process: `fma-aggregator run-once` and `fma-aggregator worker`


@pytest.mark.parametrize("algorithm", [MOMENTUM, FEDADAM], ids=["server_momentum", "fedadam"], indirect=True)
@pytest.mark.parametrize(
    ("sharded", "spots"),
    [(False, ("aggregate", "state")), (True, ("shard", "joined"))],
    ids=["whole", "sharded"],
)
def test_in_process_workers_killed_during_and_between_rounds_leave_the_uninterrupted_result(
    reference, experiment, env, processes, weights_dir, tmp_path, sharded, spots
):
    """Rounds 1 and 2: a `run-once` is killed in the middle (writing the aggregate, then the state of a
    round whose aggregate is stored; or storing the second shard's part, then once both outputs are
    joined but before the commit) and a worker takes the round over once the lease expires. After each
    commit that worker is killed, and a new one runs the next round from the stored state."""
    shards = {"FMA_SHARD_BYTES": SHARD_BYTES} if sharded else {}
    worker = [sys.executable, "-m", "fma_aggregator.cli", "worker", "--sweep-seconds", "1"]
    run_once = [sys.executable, "-m", "fma_aggregator.cli", "run-once", "--experiment", str(experiment.pk)]
    for number in range(1, ROUNDS + 1):
        send_round(experiment, number, reference)
        if number <= len(spots):
            doomed_env, marker = pausing(env, tmp_path, spots[number - 1], **shards)
            doomed = processes(run_once, doomed_env)
            waited(marker.exists, "the doomed worker to reach its spot", doomed.output)
            doomed.kill()
            assert not ModelAggregate.objects.filter(experiment=experiment, round_number=number).exists()
        survivor = processes(worker, env(**shards))
        committed(experiment, number, survivor.output)
        survivor.kill()  # between rounds: the next round is a new process's
        if number <= len(spots):
            assert_taken_over(experiment, number)
    assert_as_uninterrupted(experiment, reference, weights_dir)


# Celery: a sharded round's shards as tasks


def test_celery_workers_killed_during_a_sharded_round_and_between_rounds_leave_the_uninterrupted_result(
    reference, experiment, env, processes, settings, weights_dir, tmp_path
):
    """Round 1: the only worker runs the round and its first shard task, and is killed storing the
    second shard's part; a worker with the sweep takes the round over after the lease expires. After
    each commit the worker is killed; the next round is announced to the broker and a new worker,
    started afterwards, runs it from the stored state."""
    service_available("127.0.0.1", 6379, "Redis")
    settings.FMA_AGGREGATOR_RUNNER = "celery"
    doomed_env, marker = pausing(env, tmp_path, "shard", FMA_SHARD_BYTES=SHARD_BYTES)
    doomed = processes(celery_worker_args("doomed", beat=False, tmp_path=tmp_path), doomed_env)
    for number in range(1, ROUNDS + 1):
        send_round(experiment, number, reference)
        if number == 1:
            waited(marker.exists, "the doomed worker to reach its spot", doomed.output)
            doomed.kill()
            assert not ModelAggregate.objects.filter(experiment=experiment).exists()
        worker = processes(
            celery_worker_args(f"worker{number}", beat=True, tmp_path=tmp_path),
            env(FMA_SHARD_BYTES=SHARD_BYTES),
        )
        committed(experiment, number, worker.output)
        worker.kill()
        assert "fma.compute_shard" in worker.output()
    assert_taken_over(experiment, 1)
    assert_as_uninterrupted(experiment, reference, weights_dir)


# Lambda: the handler in a process of its own (a warm container), shards as asynchronous invocations


class LambdaApi:
    """Lambda's Invoke API on loopback (AWS cannot run here): queues each asynchronous invocation (202)
    for the test to deliver, as Lambda would, to a function instance."""

    def __init__(self) -> None:
        self.invocations: list[dict] = []
        lock = threading.Lock()
        invocations = self.invocations

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                asynchronous = self.headers["X-Amz-Invocation-Type"] == "Event"
                if self.path != f"/2015-03-31/functions/{FUNCTION}/invocations" or not asynchronous:
                    self.send_response(400)  # the caller fails: only asynchronous invocations of FUNCTION
                else:
                    with lock:
                        invocations.append(json.loads(body))
                    self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="lambda-api", daemon=True).start()

    def take(self) -> list[dict]:
        taken = self.invocations[:]
        del self.invocations[: len(taken)]
        return taken

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class FunctionInstance:
    """One instance of the aggregator function: tests/deploy/lambda_process.py (Lambda's runtime loop) in
    its own process group, the plugin folder as its package (the zip would bundle it)."""

    def __init__(self, package: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._err = open(log, "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, str(LAMBDA_PROCESS), package, package, "fma_aggregator.lambda_handler.handler"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
            text=True,
        )

    def send(self, event: dict) -> None:
        self.proc.stdin.write(json.dumps(event) + "\n")
        self.proc.stdin.flush()

    def invoke(self, event: dict) -> dict:
        self.send(event)
        answer = self.proc.stdout.readline()
        assert answer, f"the function instance died; its log:\n{self.output()}"
        answer = json.loads(answer)
        assert "result" in answer, f"{answer}; log:\n{self.output()}"
        return answer["result"]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        for stream in (self.proc.stdin, self.proc.stdout, self._err):
            stream.close()


@pytest.fixture
def lambda_api(monkeypatch, settings) -> Iterator[LambdaApi]:
    """The service announces rounds to the aggregator function through this Lambda API, and so do the
    function's instances (their environment is this process's)."""
    api = LambdaApi()
    use_lambda_api(monkeypatch, settings, api.url, FUNCTION)
    yield api
    lambda_invoke.lambda_client.cache_clear()
    api.close()


@pytest.fixture
def instances(plugin, tmp_path) -> Iterator[Callable[[dict[str, str]], FunctionInstance]]:
    """Start function instances; every one still running is killed when the test ends."""
    started: list[FunctionInstance] = []

    def start(env: dict[str, str]) -> FunctionInstance:
        instance = FunctionInstance(plugin, env, tmp_path / f"instance-{len(started)}.log")
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.kill()


def deliver(instance: FunctionInstance, api: LambdaApi, invocations: list[dict]) -> list[str]:
    """Deliver the invocations, and those they make, to the instance until none is left; their statuses."""
    statuses = []
    while invocations:
        statuses += [instance.invoke(invocation)["status"] for invocation in invocations]
        invocations = api.take()
    return statuses


def test_lambda_instances_killed_during_a_sharded_round_and_between_rounds_leave_the_uninterrupted_result(
    reference, experiment, worker_env, lambda_api, instances, weights_dir, tmp_path
):
    """Round 1: the API's announcement fans the round out to shard invocations, and the instance running
    the second one is killed storing its part; once the lease expires, the scheduled sweep asks again
    and another instance takes the round over (Lambda's retry of the killed invocation then finds
    nothing to do). After each commit the instance is killed; the next round runs on a cold start."""
    env = worker_env(FMA_LEASE_SECONDS=str(LEASE), FMA_SHARD_BYTES=SHARD_BYTES)
    ready = {"fma": "round_ready", "experiment_id": str(experiment.pk)}
    marker = tmp_path / "reached-shard"
    doomed = instances(
        {
            **env,
            "FMA_WEIGHT_STORE": "slow_store.PausingWeightStore",
            "FMA_TEST_PAUSE_AT": "shard",
            "FMA_TEST_MARKER": str(marker),
        }
    )
    send_round(experiment, 1, reference)
    announced = lambda_api.take()
    assert announced == [ready] * 3  # one per accepted update
    assert [doomed.invoke(event)["status"] for event in announced] == ["sharded", "idle", "idle"]
    shards = lambda_api.take()
    assert [(s["fma"], s["index"]) for s in shards] == [("shard", 0), ("shard", 1), ("shard", 2)]
    assert doomed.invoke(shards[0])["status"] == "shard_done"
    doomed.send(shards[1])
    waited(marker.exists, "the doomed instance to reach its spot", doomed.output)
    doomed.kill()

    instance = instances(env)
    # the dead claim's third shard, if it is still current, is stored; it does not commit
    assert instance.invoke(shards[2])["status"] in {"shard_done", "idle"}
    assert not ModelAggregate.objects.filter(experiment=experiment).exists()
    wait_for(
        lambda: RoundLease.objects.get(experiment=experiment).expires_at < time.time(),
        what="the dead claim's lease to expire",
    )
    swept = instance.invoke({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})
    assert swept["round_ready"] == [str(experiment.pk)]
    assert deliver(instance, lambda_api, lambda_api.take()) == [
        "sharded",
        "shard_done",
        "shard_done",
        "committed",
    ]
    assert instance.invoke(shards[1])["status"] == "idle"  # Lambda retries the killed invocation
    assert_taken_over(experiment, 1)
    instance.kill()  # between rounds

    for number in range(2, ROUNDS + 1):
        send_round(experiment, number, reference)
        instance = instances(env)
        statuses = deliver(instance, lambda_api, lambda_api.take())
        assert statuses == ["sharded", "idle", "idle", "shard_done", "shard_done", "committed"]
        instance.kill()
    assert_as_uninterrupted(experiment, reference, weights_dir)
