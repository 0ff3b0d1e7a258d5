"""Scale: large models end to end, many small clients at once, and rounds of many updates.

Three modes (any together; ``--quick`` makes each small enough for a test, ``--json`` prints the
results as JSON). Every figure is divided by a baseline measured in the same run:

- ``--large``: N clients each ``Client.push_file`` a model of P float32 in GPT-2-like shapes
  (default 6 x 800 M, GPT-2 Large's size: 3.2 GB each) through upload sessions to the live
  service (``python -m fma_service``, the embedded default); one round (``fma-aggregator
  run-once``, its own process); one ``Client.pull``. Before the push and the round the files read
  are evicted from the page cache (``posix_fadvise(DONTNEED)`` after ``fsync``: /proc/sys/vm/
  drop_caches needs a root outside this container), so they are read from the disk. The disk's
  own sequential write (``fsync``ed) and read of the same sizes are measured first, and each
  stage's time is compared with what the disk allows for the bytes it moves: push reads N x S and
  writes N x S, the round reads N x S and writes S, the pull reads S and writes S. The peak RSS
  (``VmHWM``) of every process is divided by the model's size.
- ``--clients``: a closed loop of C concurrent simulated clients pushing small updates (10 K and
  1 M float32) into one round of R updates (default C = 100, R = 1,000), each update from its own
  enrolled client with ``Client.push`` (one request for a small update); pushes/s, p50 / p99
  latency, round time, the server's CPU per push, and the same server's floor in the same run:
  the same bodies at the same concurrency to ``bench/floor/`` (``scale_floor_urls``, mounted only
  by the benchmark's own settings), which authenticates, writes the body to the weight store
  (fsync) and commits one row. Exactly once is checked on the result: every accepted update in
  the one aggregate, once.
- ``--round-size``: claim, commit and lineage (the dashboard's record of the round: its figures and
  the first inputs it lists) of rounds of N = 100, 1,000, 10,000 updates on the metadata store (rows
  made directly, no bytes), and the readiness check each accepted update triggers, with each one's
  SQL statements and Python memory peak; the baseline is the database reading the same N rows
  (``values_list``) and writing them once. ``--database`` makes a fresh database on a PostgreSQL server.

``--store local`` (the default) is the local directory; ``--store s3`` (``--large`` only) is S3 on
SeaweedFS (``benchmarks/seaweed.py``), started for the run on the same disk: parts go to its
presigned URLs, the round reads ranges of its objects, the pull follows a presigned URL, and
the disk's floor is the same bytes read and written. ``--database`` picks SQLite (default) or a PostgreSQL URL for the service.

Run: ``.venv/bin/python benchmarks/scale.py --large|--clients|--round-size [--quick] [--json]``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests

HERE = Path(__file__).resolve().parent
GB = 1e9


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss(pid: int) -> int:
    """A process's lifetime peak resident memory (``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache, so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def evict_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            evict(path)


# The service


class Service:
    """``python -m fma_service`` in a subprocess on a data directory of its own."""

    def __init__(
        self, data_dir: Path, *, runner: str, store: str, database: str | None, floor: bool, threads: int
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FMA_", "DJANGO_"))},
            "FMA_DATA_DIR": str(data_dir),
            "FMA_SECRET_KEY": "benchmark",
            "FMA_DEVELOPMENT": "1",
            "FMA_BIND": f"127.0.0.1:{self.port}",
            "FMA_WORKERS": "1",
            "FMA_THREADS": str(threads),
            "FMA_LOG_LEVEL": "WARNING",
            "FMA_METRICS": "off",
            "FMA_AGGREGATOR_RUNNER": runner,
            "FMA_MAX_UPDATE_BYTES": str(64 * 1024**3),
            "DJANGO_SETTINGS_MODULE": "scale_floor_settings" if floor else "fma_service.settings",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        if store not in ("local", "s3"):
            raise SystemExit(f"--store {store}: the local directory or s3 (SeaweedFS, --large only)")
        if database:
            self.env["FMA_DATABASE_URL"] = database
        self.process: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    def configure_here(self) -> None:
        """This process uses the same settings (database, store) to set up and to verify."""
        for name in (
            "FMA_DATA_DIR",
            "FMA_SECRET_KEY",
            "FMA_DEVELOPMENT",
            "FMA_MAX_UPDATE_BYTES",
            "FMA_DATABASE_URL",
        ):
            if name in self.env:
                os.environ[name] = self.env[name]
        for name, value in self.env.items():  # the weight store's, when it is not the local default
            if name == "FMA_WEIGHT_STORE" or name.startswith(("FMA_S3_", "AWS_")):
                os.environ[name] = value
        os.environ["DJANGO_SETTINGS_MODULE"] = "fma_service.settings"
        import django

        django.setup()

    def __enter__(self) -> Service:
        self.log = (self.data_dir / "server.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fma_service"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the service exited: {(self.data_dir / 'server.log').read_text()[-3000:]}"
                )
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(self.url + "api/v1/", timeout=5).status_code < 500:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("the service did not answer within 180 s")
        if self.env["FMA_AGGREGATOR_RUNNER"] == "celery":  # the Servers shape: one worker runs the rounds
            self.worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "fma_aggregator",
                    "worker",
                    "-P",
                    "solo",
                    "-l",
                    "WARNING",
                ],
                env=self.env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for process in (self.worker, self.process):
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.log.close()

    def cpu_seconds(self) -> float:
        process = psutil.Process(self.process.pid)
        times = process.cpu_times()
        return times.user + times.system


@contextlib.contextmanager
def postgresql_database(server: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server at ``server`` (a URL), dropped afterwards: its URL."""
    import psycopg

    name = f"fma_scale_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_experiment(name: str, spec: list[dict[str, Any]], policy: Any) -> int:
    from django.contrib.auth.models import User

    from fma_django import services

    developer, _ = User.objects.get_or_create(username="bench")
    experiment = services.experiment_create(
        developer=developer, name=name, open_enrollment=True, tensor_spec=spec, round_policy=policy
    )
    return experiment.pk


def enroll(experiment_pk: int, count: int) -> list[str]:
    """``count`` new enrolled clients' credentials (made here: enrolling is not what is measured)."""
    from fma_django import services
    from fma_django.models import Experiment

    experiment = Experiment.objects.get(pk=experiment_pk)
    return [services.client_register(experiment=experiment)[1] for _ in range(count)]


# --large


def gpt2_shapes(params: int, width: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """GPT-2's tensors (embeddings, then per block: layer norms, attention, MLP) at ``width``,
    with as many blocks as fit ``params`` (at least one)."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("wte", (vocab, width)), ("wpe", (1024, width))]
    block = [
        ("ln_1.weight", (width,)),
        ("ln_1.bias", (width,)),
        ("attn.c_attn.weight", (width, 3 * width)),
        ("attn.c_attn.bias", (3 * width,)),
        ("attn.c_proj.weight", (width, width)),
        ("attn.c_proj.bias", (width,)),
        ("ln_2.weight", (width,)),
        ("ln_2.bias", (width,)),
        ("mlp.c_fc.weight", (width, 4 * width)),
        ("mlp.c_fc.bias", (4 * width,)),
        ("mlp.c_proj.weight", (4 * width, width)),
        ("mlp.c_proj.bias", (width,)),
    ]
    per_block = sum(int(np.prod(s)) for _, s in block)
    blocks = max(1, round((params - vocab * width - 1024 * width - 2 * width) / per_block))
    for n in range(blocks):
        shapes += [(f"h.{n}.{name}", shape) for name, shape in block]
    return [*shapes, ("ln_f.weight", (width,)), ("ln_f.bias", (width,))]


def write_model(path: Path, shapes: list[tuple[str, tuple[int, ...]]], seed: int) -> int:
    """A safetensors file of float32 written tensor by tensor from a 4 MB random block (memory stays
    small for a 3.2 GB model); fsynced. Its size."""
    header: dict[str, Any] = {"__metadata__": {"fma.order": json.dumps([n for n, _ in shapes])}}
    offset = 0
    for name, shape in shapes:
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    block = np.random.default_rng(seed).standard_normal(1 << 20, dtype=np.float32).tobytes()
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        left = offset
        while left:
            chunk = block[: min(left, len(block))]
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return path.stat().st_size


def disk_io(path: Path) -> tuple[int, int] | None:
    """Bytes read and written so far by the block device holding ``path``, by every process on the
    machine (``/proc/diskstats``); None where that device is not listed there."""
    device = os.stat(path).st_dev
    with contextlib.suppress(OSError), open("/proc/diskstats") as stats:
        for line in stats:
            fields = line.split()
            if (int(fields[0]), int(fields[1])) == (os.major(device), os.minor(device)):
                return int(fields[5]) * 512, int(fields[9]) * 512  # sectors of 512 bytes, always
    return None


def disk_floor(directory: Path, size: int, count: int) -> dict[str, float]:
    """The disk's sequential write (fsynced) and read (evicted first) of ``count`` files of ``size``."""
    block = os.urandom(8 << 20)
    paths = [directory / f"disk-{n}.bin" for n in range(count)]
    started = time.perf_counter()
    for path in paths:
        with open(path, "wb") as out:
            left = size
            while left:
                written = out.write(block[: min(left, len(block))])
                left -= written
            out.flush()
            os.fsync(out.fileno())
    write = time.perf_counter() - started
    for path in paths:
        evict(path)
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as source:
            while source.read(8 << 20):
                pass
    read = time.perf_counter() - started
    for path in paths:
        path.unlink()
    total = size * count
    return {"write_gbps": total / write / GB, "read_gbps": total / read / GB}


def run_large(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from fma_client import Client

    clients, params = (3, 4_000_000) if args.quick else (args.large_clients, args.params)
    width, vocab = (256, 5000) if args.quick else (1280, 50257)
    shapes = gpt2_shapes(params, width, vocab)
    model_params = sum(int(np.prod(s)) for _, s in shapes)
    model_bytes = 4 * model_params
    need = (2 * clients + 4) * model_bytes  # the client files, the stored updates, aggregate, pull, disk test
    free = shutil.disk_usage(work).free
    if free < need * 1.1:
        raise SystemExit(f"--large needs about {need / GB:.1f} GB free in {work}; {free / GB:.1f} GB are")
    data = work / "large"
    data.mkdir()
    files = data / "client-files"
    files.mkdir()
    disk = disk_floor(data, model_bytes, clients)
    paths = []
    for n in range(clients):
        write_model(files / f"client-{n}.safetensors", shapes, seed=n)
        paths.append(files / f"client-{n}.safetensors")
    # a request thread for every part in flight (4 per client): a part waiting for a thread is not
    # read, and past FMA_READ_TIMEOUT the server ends it as a silent client (then it is sent again)
    service = Service(
        data / "service",
        runner="none",
        store=args.store,
        database=args.database,
        floor=False,
        threads=4 * clients + 4,
    )
    service.data_dir.mkdir()
    result: dict[str, Any] = {
        "store": args.store,
        "clients": clients,
        "params": model_params,
        "model_bytes": model_bytes,
        "tensors": len(shapes),
        "disk_free_bytes": free,
        "disk_needed_bytes": need,
        "disk": disk,
        "loadavg_before": loadavg(),
    }
    with contextlib.ExitStack() as running:
        stored = _large_store(args.store, data, service, running)
        running.enter_context(service)
        service.configure_here()
        spec = [{"name": n, "dtype": "F32", "shape": list(s)} for n, s in shapes]
        experiment = make_experiment("large", spec, {"policy": "require_x_updates", "x": clients})
        credentials = enroll(experiment, clients)
        for path in paths:
            evict(path)
        server_cpu, own_cpu = service.cpu_seconds(), time.process_time()
        moved_bytes = {"push": disk_io(data)}
        started = time.perf_counter()

        def push(n: int) -> dict:
            with Client(
                service.url, experiment, token=credentials[n], quiet=True, timeout=(10, 600)
            ) as client:
                return client.push_file(paths[n], num_examples=1 + n)

        with ThreadPoolExecutor(clients) as pool:
            updates = list(pool.map(push, range(clients)))
        push_seconds = time.perf_counter() - started
        # what bounds the push: both processes' CPU over the wall time, on the machine's cores
        push_cpu = {"server": service.cpu_seconds() - server_cpu, "clients": time.process_time() - own_cpu}
        moved_bytes["push"] = _moved(moved_bytes["push"], disk_io(data))
        evict_tree(stored)
        moved_bytes["round"] = disk_io(data)
        started = time.perf_counter()
        aggregator = subprocess.run(
            [sys.executable, "-c", _RUN_ONCE, str(experiment)],
            env=service.env,
            capture_output=True,
            text=True,
            check=True,
        )
        process_seconds = time.perf_counter() - started
        outcome, aggregator_peak = json.loads(aggregator.stdout.strip().splitlines()[-1])
        round_seconds = outcome["seconds"]  # claim to commit, in the aggregator (not its start-up)
        moved_bytes["round"] = _moved(
            moved_bytes["round"], disk_io(data)
        )  # the aggregator process's start-up too
        evict_tree(stored)
        before = peak_rss(os.getpid())
        moved_bytes["pull"] = disk_io(data)
        started = time.perf_counter()
        with Client(service.url, experiment, token=credentials[0], quiet=True, timeout=(10, 600)) as client:
            pulled = client.pull(for_training=False)
        pull_seconds = time.perf_counter() - started
        moved_bytes["pull"] = _moved(moved_bytes["pull"], disk_io(data))
        pulled_params = sum(a.size for a in pulled.weights.values())
        del pulled
        server_peak = peak_rss(service.process.pid)
        exactly_once = _exactly_once(experiment, [u["id"] for u in updates])
    total = clients * model_bytes
    # What the disk allows: push reads the client files and writes the stored updates, the round
    # reads the updates and writes the aggregate, the pull reads the aggregate and writes its copy.
    floor = {
        "push": total / (disk["read_gbps"] * GB) + total / (disk["write_gbps"] * GB),
        "round": total / (disk["read_gbps"] * GB) + model_bytes / (disk["write_gbps"] * GB),
        "pull": model_bytes / (disk["read_gbps"] * GB) + model_bytes / (disk["write_gbps"] * GB),
    }
    seconds = {"push": push_seconds, "round": round_seconds, "pull": pull_seconds}
    moved = {"push": total, "round": total, "pull": model_bytes}
    result.update(
        stages={
            stage: {
                "seconds": seconds[stage],
                "gbps": moved[stage] / seconds[stage] / GB,
                "disk_floor_seconds": floor[stage],
                "ratio_to_disk": floor[stage] / seconds[stage],
                # what the disk did meanwhile, every process's (None: no block device to ask)
                "disk_read_bytes": moved_bytes[stage] and moved_bytes[stage][0],
                "disk_written_bytes": moved_bytes[stage] and moved_bytes[stage][1],
            }
            for stage in seconds
        },
        push_cpu_seconds=push_cpu,
        cores=os.cpu_count(),
        round_outcome=outcome["status"],
        aggregator_process_seconds=process_seconds,
        pulled_params=pulled_params,
        peak_rss_over_model={
            "server": server_peak / model_bytes,
            "aggregator": aggregator_peak / model_bytes,
            "client_process": max(before, peak_rss(os.getpid())) / model_bytes,
        },
        exactly_once=exactly_once,
        loadavg_after=loadavg(),
    )
    return result


LARGE_BUCKET = "fma-scale"


def _moved(before: tuple[int, int] | None, after: tuple[int, int] | None) -> tuple[int, int] | None:
    """The disk's bytes read and written between two ``disk_io`` readings."""
    if before is None or after is None:
        return None
    return after[0] - before[0], after[1] - before[1]


def _large_store(store: str, data: Path, service: Service, running: contextlib.ExitStack) -> Path:
    """Where the stored weights live on disk, to evict them from the page cache: the service's
    weights folder, or (``--store s3``) SeaweedFS's data folder, its gateway started here for the
    run and given to the service (and, through its environment, to the round's process)."""
    if store != "s3":
        return service.data_dir / "weights"
    from seaweed import seaweedfs

    s3 = running.enter_context(seaweedfs(data / "s3", buckets=[LARGE_BUCKET]))
    service.env.update(s3.store_environment(LARGE_BUCKET))
    return s3.folder


_RUN_ONCE = """
import json, sys, time, django
django.setup()
from fma_aggregator.config import AggregatorConfig
from fma_aggregator.engine import build_engine
engine = build_engine(AggregatorConfig.from_env())
started = time.perf_counter()
outcome = engine.run_round(sys.argv[1]).to_dict()
seconds = time.perf_counter() - started
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps([{"status": outcome["status"], "seconds": seconds}, peak]))
"""


def _exactly_once(experiment_pk: int, accepted: list[int]) -> dict[str, Any]:
    """Every accepted update consumed by exactly one aggregate of the experiment, and nothing else in it."""
    from fma_django.models import ModelUpdate

    rows = list(
        ModelUpdate.objects.filter(experiment_id=experiment_pk).values_list("pk", "status", "aggregate_id")
    )
    consumed = {pk: aggregate for pk, status, aggregate in rows if status == "consumed"}
    return {
        "accepted": len(accepted),
        "distinct_accepted": len(set(accepted)),
        "rows": len(rows),
        "consumed": len(consumed),
        "aggregates": len(set(consumed.values())),
        "holds": len(set(accepted)) == len(accepted) == len(rows) == len(consumed)
        and set(consumed) == set(accepted),
    }


# --clients


def run_clients(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    sizes = [10_000] if args.quick else args.update_params
    concurrency = 8 if args.quick else args.concurrency
    round_size = 40 if args.quick else args.round_size_clients
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (hard, hard)
    )  # a socket per simulated client, and the server's
    if len(sizes) > 1:  # one Django setup per process, and each size has a service of its own
        runs = []
        for params in sizes:
            command = [
                sys.executable,
                __file__,
                "--clients",
                "--json",
                *_passed_on(args, update_params=[params]),
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            one = json.loads(out)["clients"]
            runs += one["runs"]
        return {**one, "runs": runs}
    results = []
    for params in sizes:
        data = work / f"clients-{params}"
        data.mkdir()
        with contextlib.ExitStack() as stack:
            database = args.database
            if args.servers:
                database = stack.enter_context(postgresql_database(args.postgresql))
            service = Service(
                data,
                runner="celery" if args.servers else "inprocess",
                store=args.store,
                database=database,
                floor=True,
                threads=args.server_threads,
            )
            if args.servers:
                service.env["FMA_BROKER_URL"] = args.broker
            if args.db_pool:
                service.env["FMA_DB_POOL_SIZE"] = str(args.db_pool)
            stack.enter_context(service)
            service.configure_here()
            results.append(_clients_run(service, params, concurrency, round_size, args.push_form))
            from django.db import connection, connections

            if connection.vendor == "postgresql":  # the limit the server's connections count against
                with connection.cursor() as cursor:
                    cursor.execute("SHOW max_connections")
                    results[-1]["database_max_connections"] = int(cursor.fetchone()[0])
            connections.close_all()  # before the database is dropped
    return {
        "runs": results,
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "fd_limit_before": soft,
        "server_threads": args.server_threads,
        "shape": "servers (PostgreSQL, Celery on Redis)"
        if args.servers
        else "embedded (SQLite, in-process runner)",
        "database": "postgresql" if (args.database or args.servers) else "sqlite",
        "database_connections": (
            f"a pool of at most {args.db_pool} per process"
            if args.db_pool
            else f"one per server thread (FMA_THREADS={args.server_threads})"
        )
        + ", plus the round runner's",
    }


def _clients_run(
    service: Service, params: int, concurrency: int, round_size: int, push_form: str
) -> dict[str, Any]:
    from django.db import connection

    from fma_client import Client
    from fma_django.models import ModelAggregate

    spec = [{"name": "w", "dtype": "F32", "shape": [params]}]
    experiment = make_experiment(f"clients-{params}", spec, {"policy": "require_x_updates", "x": round_size})
    floor_credentials = enroll(experiment, concurrency)
    credentials = enroll(experiment, round_size)
    connection.close()  # the server's SQLite writes must not wait on this process
    rng = np.random.default_rng(params)
    bodies = [rng.standard_normal(params, dtype=np.float32) for _ in range(8)]

    # The floor: the same bodies at the same concurrency, as many requests as pushes.
    from fma_client.weights import encode

    encoded = [encode({"w": b}) for b in bodies]
    floor_latencies: list[float] = []
    lock = threading.Lock()

    def floor_worker(worker: int, count: int) -> None:
        for n in range(count):
            started = time.perf_counter()
            with requests.Session() as http:  # a connection per request, as each push has its own client
                http.headers["Authorization"] = f"Client {floor_credentials[worker]}"
                answer = http.post(
                    f"{service.url}bench/floor/{experiment}/", data=encoded[n % len(encoded)], timeout=600
                )
                answer.raise_for_status()
            with lock:
                floor_latencies.append(time.perf_counter() - started)

    shares = [round_size // concurrency + (w < round_size % concurrency) for w in range(concurrency)]
    cpu = service.cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(floor_worker, range(concurrency), shares))
    floor_seconds = time.perf_counter() - started
    floor_cpu = service.cpu_seconds() - cpu

    # The pushes: each update from its own enrolled client, C at a time, closed loop.
    queue = iter(range(round_size))
    latencies: list[float] = []
    accepted: list[int] = []
    errors: list[str] = []

    def push_worker(_: int) -> None:
        while True:
            with lock:
                n = next(queue, None)
            if n is None:
                return
            started = time.perf_counter()
            try:
                with Client(
                    service.url, experiment, token=credentials[n], quiet=True, timeout=(30, 600)
                ) as client:
                    if push_form == "session":  # every push through an upload session, as before
                        client.single_request_bytes = 0
                    update = client.push({"w": bodies[n % len(bodies)] + np.float32(n)}, num_examples=1)
            except Exception as error:  # counted and reported: the target is zero
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
                accepted.append(update["id"])

    cpu = service.cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(push_worker, range(concurrency)))
    push_seconds = time.perf_counter() - started
    push_cpu = service.cpu_seconds() - cpu
    last_push = time.perf_counter()
    deadline = time.monotonic() + 600
    while not ModelAggregate.objects.filter(experiment_id=experiment).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("no aggregate 600 s after the last push")
        time.sleep(0.05)
    round_wait = time.perf_counter() - last_push
    aggregate = ModelAggregate.objects.get(experiment_id=experiment)
    exactly_once = _exactly_once(experiment, accepted)
    connection.close()
    pushes = len(accepted)
    return {
        "update_params": params,
        "push_form": push_form,
        "body_bytes": len(encoded[0]),
        "concurrency": concurrency,
        "round_size": round_size,
        "pushes_per_second": pushes / push_seconds,
        "p50_seconds": statistics.median(latencies) if latencies else None,
        "p99_seconds": float(np.percentile(latencies, 99)) if latencies else None,
        "server_cpu_ms_per_push": 1000 * push_cpu / max(pushes, 1),
        "floor_requests_per_second": round_size / floor_seconds,
        "floor_p50_seconds": statistics.median(floor_latencies),
        "floor_p99_seconds": float(np.percentile(floor_latencies, 99)),
        "floor_server_cpu_ms_per_request": 1000 * floor_cpu / round_size,
        "ratio_to_floor": (pushes / push_seconds) / (round_size / floor_seconds),
        "round_seconds": aggregate.duration_seconds,
        "aggregate_seen_after_last_push_seconds": round_wait,
        "errors": len(errors),
        "first_errors": errors[:3],
        "exactly_once": exactly_once,
        "loadavg": loadavg(),
    }


# --round-size


REPEATS = 3  # each --round-size figure is the fastest of this many runs


def run_round_size(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    os.environ.update(
        FMA_DATA_DIR=str(work / "round-size"),
        FMA_SECRET_KEY="benchmark",
        FMA_DEVELOPMENT="1",
        DJANGO_SETTINGS_MODULE="fma_service.settings",
    )
    with contextlib.ExitStack() as stack:
        if args.database:  # a fresh database on that server ("postgresql": the one --postgresql names)
            server = args.postgresql if args.database == "postgresql" else args.database
            os.environ["FMA_DATABASE_URL"] = stack.enter_context(postgresql_database(server))
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        stack.callback(connections.close_all)  # before the database is dropped
        call_command("migrate", interactive=False, verbosity=0)
        sizes = [50, 500] if args.quick else args.round_sizes
        rows = [_round_of(n) for n in sizes]
    small, large = rows[0], rows[-1]
    growth = large["updates"] / small["updates"]
    return {
        "database": "postgresql" if args.database else "sqlite",
        "rounds": rows,
        "claim_growth_per_update": (large["claim_seconds"] / small["claim_seconds"]) / growth,
        "commit_growth_per_update": (large["commit_seconds"] / small["commit_seconds"]) / growth,
        "loadavg": loadavg(),
    }


def _round_of(n: int) -> dict[str, Any]:
    """A round of ``n`` pending updates (rows only): the readiness checks, the claim and the commit, each
    timed, then the claim and commit again in a transaction rolled back, for their statements and
    Python memory peak (tracemalloc slows every allocation several times: it never runs while timing).
    The baseline is the database reading the same rows as plain values (``values_list``)."""
    from django.db import transaction
    from django.utils import timezone

    from fma_core.rounds import RoundEngine
    from fma_django.models import Client, Enrollment, Experiment, ModelAggregate, ModelUpdate, UpdateStatus
    from fma_django.storage import weight_store
    from fma_django.store import DjangoMetadataStore
    from fma_service.dashboard import selectors as dashboard

    policy = {"policy": "require_x_updates", "x": n}
    experiment = make_experiment(f"round-{n}", [{"name": "w", "dtype": "F32", "shape": [4]}], policy)
    with transaction.atomic():
        clients = Client.objects.bulk_create([Client() for _ in range(n + 1)])
        Enrollment.objects.bulk_create([Enrollment(experiment_id=experiment, client=c) for c in clients])
        ModelUpdate.objects.bulk_create(
            [
                ModelUpdate(
                    experiment_id=experiment,
                    client=c,
                    base_round=0,
                    num_examples=1,
                    weights_key=f"updates/{experiment}/{k}.safetensors",
                    content_id=hashlib.sha256(str(k).encode()).hexdigest(),
                    size_bytes=56,
                )
                for k, c in enumerate(clients[:n])
            ]
        )
    store = DjangoMetadataStore()
    engine = RoundEngine(store, weight_store(), worker_id="bench", lease_seconds=600)
    read_floor, _ = _timed(
        lambda: list(
            ModelUpdate.objects.filter(experiment_id=experiment).values_list(
                "pk", "client__uuid", "weights_key", "content_id"
            )
        )
    )

    # What each accepted update's notification costs before any claim (RoundEngine.start_round, which
    # claims nothing when the policy is not met): one short of a count, and all_clients with one of the
    # n + 1 enrolled clients still to push, which needs every pending update's client.
    def not_ready(round_policy: Any) -> float:
        Experiment.objects.filter(pk=experiment).update(round_policy=round_policy)
        seconds, outcome = _timed(lambda: engine.start_round(str(experiment)))
        assert outcome.status == "not_ready", outcome
        return seconds

    short_of_count = not_ready({"policy": "require_x_updates", "x": n + 1})
    short_of_clients = not_ready({"policy": "all_clients"})
    Enrollment.objects.filter(experiment_id=experiment, client=clients[n]).update(revoked_at=timezone.now())
    Experiment.objects.filter(pk=experiment).update(round_policy=policy)

    with transaction.atomic():  # statements and memory, rolled back
        claim_statements, claim_peak, claim = _counted(
            lambda: store.claim_round(str(experiment), worker="bench", lease_seconds=600)
        )
        commit_statements, commit_peak, _ = _counted(lambda: store.commit_round(claim, _draft(claim, n)))
        transaction.set_rollback(True)
    claim_times, commit_times, consumed = [], [], []
    for repeat in range(REPEATS):
        if repeat:  # the round undone (not timed): its updates pending again, its aggregate gone
            ModelUpdate.objects.filter(experiment_id=experiment).update(
                status=UpdateStatus.PENDING, aggregate=None, aggregate_weight=None
            )
            ModelAggregate.objects.filter(experiment_id=experiment).delete()
        seconds, claim = _timed(
            lambda: store.claim_round(str(experiment), worker="bench", lease_seconds=600), repeats=1
        )
        claim_times.append(seconds)
        seconds, _ = _timed(lambda: store.commit_round(claim, _draft(claim, n)), repeats=1)  # noqa: B023 - called here
        commit_times.append(seconds)
        consumed.append(
            ModelUpdate.objects.filter(experiment_id=experiment, status=UpdateStatus.CONSUMED).count()
        )
    claim_seconds, commit_seconds = min(claim_times), min(commit_times)
    # The committed round's lineage, as the dashboard reads it: the aggregate, its figures over all n
    # updates, and the first INPUTS_SHOWN of them listed
    row = Experiment.objects.get(pk=experiment)
    lineage_statements, lineage_peak, lineage = _counted(lambda: dashboard.round_rows(row))
    listed = [(r.updates, len(r.inputs)) for r in lineage]
    assert listed == [(n, min(n, dashboard.INPUTS_SHOWN))], listed
    lineage_seconds, _ = _timed(lambda: dashboard.round_rows(row))
    write_floor, _ = _timed(
        lambda: ModelUpdate.objects.filter(experiment_id=experiment).update(num_examples=2)
    )
    return {
        "updates": n,
        "claimed": len(claim.updates),
        "consumed": min(consumed),  # in each of the REPEATS rounds, all of them
        "read_floor_seconds": read_floor,
        "write_floor_seconds": write_floor,
        "claim_seconds": claim_seconds,
        "claim_statements": claim_statements,
        "claim_python_peak_bytes": claim_peak,
        "commit_seconds": commit_seconds,
        "commit_statements": commit_statements,
        "commit_python_peak_bytes": commit_peak,
        "lineage_seconds": lineage_seconds,
        "lineage_statements": lineage_statements,
        "lineage_python_peak_bytes": lineage_peak,
        "ready_check_short_of_count_seconds": short_of_count,
        "ready_check_short_of_clients_seconds": short_of_clients,
        # each stage's ratio to the baseline (1.0: as fast as the database reads, or writes, the rows)
        "claim_ratio_to_read": read_floor / claim_seconds,
        "commit_ratio_to_read": read_floor / commit_seconds,
        "commit_ratio_to_write": write_floor / commit_seconds,
        "lineage_ratio_to_read": read_floor / lineage_seconds,
        "ready_check_short_of_count_ratio_to_read": read_floor / short_of_count,
        "ready_check_short_of_clients_ratio_to_read": read_floor / short_of_clients,
    }


def _timed(work: Callable[[], Any], repeats: int = REPEATS) -> tuple[float, Any]:
    """The fastest of ``repeats`` runs of ``work`` (other processes' load comes and goes), and its result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


def _counted(work: Callable[[], Any]) -> tuple[int, int, Any]:
    """``work``'s SQL statements and Python memory peak (tracemalloc), and its result."""
    import tracemalloc

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    tracemalloc.start()
    try:
        with CaptureQueriesContext(connection) as queries:
            result = work()
        return len(queries.captured_queries), tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def _draft(claim: Any, n: int) -> Any:
    from fma_core.connectors import AggregateDraft

    return AggregateDraft(
        weights_key=f"aggregates/{claim.experiment.experiment_id}/1.safetensors",
        content_id="0" * 64,
        size_bytes=56,
        aggregator="fedavg",
        aggregator_params={},
        update_ids=tuple(u.update_id for u in claim.updates),
        input_weights=tuple(1.0 / n for _ in range(n)),
        duration_seconds=0.0,
        peak_memory_bytes=0,
    )


# Output


def report(results: dict[str, Any]) -> None:
    if "round_size" in results:
        r = results["round_size"]
        print(
            f"round size ({r['database']}; load {r['loadavg']}); each stage's ratio to a read of the same rows:"
        )
        for row in r["rounds"]:
            print(
                f"  N={row['updates']:>6,}: read {row['read_floor_seconds'] * 1000:7.1f} ms; "
                f"claim {row['claim_seconds'] * 1000:7.1f} ms (ratio {row['claim_ratio_to_read']:.2f}; "
                f"{row['claim_statements']} statements, {row['claim_python_peak_bytes'] / 1e6:.1f} MB); "
                f"commit {row['commit_seconds'] * 1000:7.1f} ms (ratio {row['commit_ratio_to_read']:.2f}, "
                f"{row['commit_ratio_to_write']:.2f} to one UPDATE of the rows; {row['commit_statements']} statements, "
                f"{row['commit_python_peak_bytes'] / 1e6:.1f} MB); lineage {row['lineage_seconds'] * 1000:.1f} ms "
                f"(ratio {row['lineage_ratio_to_read']:.2f}; {row['lineage_statements']} statements, "
                f"{row['lineage_python_peak_bytes'] / 1e6:.1f} MB); not ready, short of a count "
                f"{row['ready_check_short_of_count_seconds'] * 1000:.1f} ms "
                f"(ratio {row['ready_check_short_of_count_ratio_to_read']:.2f}), short of a client "
                f"{row['ready_check_short_of_clients_seconds'] * 1000:.1f} ms "
                f"(ratio {row['ready_check_short_of_clients_ratio_to_read']:.2f})"
            )
        print(
            f"  time per update, largest over smallest round: claim {r['claim_growth_per_update']:.2f}x, "
            f"commit {r['commit_growth_per_update']:.2f}x (1.0 = linear)"
        )
    if "clients" in results:
        c = results["clients"]
        limit = c["runs"][0].get("database_max_connections") if c["runs"] else None
        connections = c["database_connections"] + (f"; the database allows {limit}" if limit else "")
        print(f"clients ({c['shape']}; fd limit {c['fd_limit']}; {connections}):")
        for run in c["runs"]:
            print(
                f"  {run['update_params']:,} params ({run['body_bytes']:,} B, push form {run['push_form']}), C={run['concurrency']}, round of "
                f"{run['round_size']:,}: {run['pushes_per_second']:.1f} pushes/s (p50 {run['p50_seconds']:.3f} s, "
                f"p99 {run['p99_seconds']:.3f} s, server CPU {run['server_cpu_ms_per_push']:.1f} ms/push); floor "
                f"{run['floor_requests_per_second']:.1f}/s (p50 {run['floor_p50_seconds']:.3f} s, CPU "
                f"{run['floor_server_cpu_ms_per_request']:.1f} ms); ratio {run['ratio_to_floor']:.2f}; round "
                f"{run['round_seconds']:.2f} s; errors {run['errors']}; exactly once: {run['exactly_once']['holds']} "
                f"(load {run['loadavg']})"
            )
    if "large" in results:
        g = results["large"]
        print(
            f"large ({g['store']} store): {g['clients']} x {g['params']:,} float32 ({g['model_bytes'] / GB:.2f} GB, {g['tensors']} tensors); "
            f"disk write {g['disk']['write_gbps']:.2f} GB/s, read {g['disk']['read_gbps']:.2f} GB/s; "
            f"needed {g['disk_needed_bytes'] / GB:.1f} GB of {g['disk_free_bytes'] / GB:.1f} GB free "
            f"(load {g['loadavg_before']} -> {g['loadavg_after']})"
        )
        for stage, s in g["stages"].items():
            print(
                f"  {stage:5}: {s['seconds']:7.2f} s, {s['gbps']:.2f} GB/s; the disk allows {s['disk_floor_seconds']:.2f} s: "
                f"ratio {s['ratio_to_disk']:.2f}"
                + (
                    f"; the disk read {s['disk_read_bytes'] / GB:.1f} GB and wrote {s['disk_written_bytes'] / GB:.1f} GB meanwhile"
                    if s["disk_read_bytes"] is not None
                    else ""
                )
            )
        peaks = ", ".join(f"{k} {v:.2f}x" for k, v in g["peak_rss_over_model"].items())
        print(f"  peak RSS over one model: {peaks}; exactly once: {g['exactly_once']['holds']}")
        cpu = g["push_cpu_seconds"]
        print(
            f"  push CPU: server {cpu['server']:.1f} s, clients {cpu['clients']:.1f} s over "
            f"{g['stages']['push']['seconds']:.1f} s on {g['cores']} cores"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="large models end to end")
    parser.add_argument("--clients", action="store_true", help="many concurrent small clients")
    parser.add_argument("--round-size", action="store_true", help="claim and commit of large rounds")
    parser.add_argument("--quick", action="store_true", help="small sizes, for tests")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--store",
        default="local",
        choices=["local", "s3"],
        help="the weight store: the local directory, or (--large) S3 on SeaweedFS started for the run",
    )
    parser.add_argument(
        "--database",
        default=None,
        help="a PostgreSQL URL (default: SQLite in the data dir); --round-size makes a fresh database there "
        "('postgresql': on the --postgresql server)",
    )
    parser.add_argument(
        "--work", default=None, help="directory for the run's files (default: a temporary one)"
    )
    parser.add_argument("--large-clients", type=int, default=6)
    parser.add_argument("--params", type=int, default=800_000_000, help="parameters per model (--large)")
    parser.add_argument("--concurrency", type=int, default=100, help="concurrent clients (--clients)")
    parser.add_argument("--round-size-clients", type=int, default=1000, help="updates per round (--clients)")
    parser.add_argument("--update-params", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument(
        "--server-threads", type=int, default=16, help="the server's request threads (--clients)"
    )
    parser.add_argument(
        "--servers",
        action="store_true",
        help="--clients on the Servers shape: PostgreSQL and a Celery worker on Redis",
    )
    parser.add_argument(
        "--postgresql", default="postgresql://postgres@127.0.0.1:5432/postgres", help="for --servers"
    )
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14", help="for --servers")
    parser.add_argument(
        "--db-pool", type=int, default=0, help="the server's psycopg pool size (FMA_DB_POOL_SIZE)"
    )
    parser.add_argument(
        "--push-form",
        default="auto",
        choices=["auto", "session"],
        help="auto: fma-client's choice by size; session: always an upload session (the form before the one-request push)",
    )
    parser.add_argument("--round-sizes", type=int, nargs="+", default=[100, 1_000, 10_000])
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the services this run started are stopped
    if not (args.large or args.clients or args.round_size):
        parser.error("choose at least one of --large, --clients, --round-size")
    if args.store != "local" and (args.clients or args.round_size):
        parser.error(f"--store {args.store} is measured by --large only")
    work = Path(tempfile.mkdtemp(prefix="fma-scale-", dir=args.work))
    results: dict[str, Any] = {"loadavg": loadavg()}
    try:
        # one Django setup per process: --round-size uses its own database, the others the service's
        if args.round_size:
            results["round_size"] = run_round_size(args, work)
        elif args.clients:
            results["clients"] = run_clients(args, work)
        elif args.large:
            results["large"] = run_large(args, work)
        others = [m for m in ("clients", "large") if getattr(args, m) and m not in results]
        for mode in others:  # each in a process of its own
            command = [sys.executable, __file__, f"--{mode}", "--json", *(["--quick"] if args.quick else [])]
            command += _passed_on(args)
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[mode] = json.loads(out)[mode]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        report(results)
    return results


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _passed_on(args: argparse.Namespace, update_params: list[int] | None = None) -> list[str]:
    options = [
        "--store",
        args.store,
        "--large-clients",
        str(args.large_clients),
        "--params",
        str(args.params),
    ]
    options += ["--concurrency", str(args.concurrency), "--round-size-clients", str(args.round_size_clients)]
    options += [
        "--update-params",
        *map(str, update_params or args.update_params),
        "--server-threads",
        str(args.server_threads),
    ]
    options += ["--push-form", args.push_form, "--postgresql", args.postgresql, "--broker", args.broker]
    options += ["--db-pool", str(args.db_pool), *(["--servers"] if args.servers else [])]
    options += ["--database", args.database] if args.database else []
    return options + (["--work", args.work] if args.work else [])


if __name__ == "__main__":
    main()
