"""One full aggregation round through the service's own code, then the same round sharded over Celery workers.

N updates × P float32 parameters in 10 tensors (default N=50, P=10M; ``--quick``: N=20, P=2M),
submitted through fma-django's services (the API's path: streamed to the local weight store,
checked, recorded) into a throwaway PostgreSQL database. Then:

1. one round, ``RoundEngine.run_round`` over ``DjangoMetadataStore``, in a fresh process with the
   default aggregation threads; ``round_seconds`` runs from the policy check to the commit
   (``engine_seconds`` is the aggregating and writing part of it), ``round_gbps`` is update
   bytes consumed per second, ``peak_rss_bytes`` is that process's peak resident memory
   (``VmHWM``: Python, Django and numpy included);
2. the same round (the same update objects, in new experiments) split in two shards
   (``FMA_SHARD_BYTES`` = half the model), one Celery task per shard, on one worker and then on two, each
   with ``FMA_AGGREGATION_THREADS=1``, timed from enqueueing ``fma.run_round`` to the commit (as the
   committing worker logs it),
   after one warm-up round on the same workers: two blocks of 3 timed rounds per worker count,
   alternating one and two workers, and the median round of each count is reported;
   ``speedup_2_workers`` = one worker's time / two workers' time. ``stages_*`` say where that
   time went, from the workers' own logs: ``run_round`` (the task that claims, checks the
   headers and plans), ``shards`` (aggregating every shard and storing it as its part of the
   aggregate), ``combine`` (the last shard joining the parts, hashing the aggregate and
   committing), ``overlapped`` (two tasks
   at once) and ``idle`` (no task running: hand-offs, polling).
   ``serial_fraction_1_worker`` is the share of one worker's time outside the shards, and
   ``speedup_bound_2_workers`` the speedup those stages allow when two cores are free
   (serial tasks, then one shard's time): on a shared machine the measured speedup falls short
   of it by what other jobs take from the second core.

3. the read floor (``read_floor.file_read``) over the same update files as the round reads them,
   in the page cache after they were submitted: each block read with ``os.preadv`` into a buffer and
   summed, on one thread (``files_read_gbps``) and on as many as the round's aggregation uses
   (``files_read_all_gbps``), the best of 5 passes, measured right before the timed round;
   ``round_ratio_vs_read_all`` is ``round_gbps`` over the all-thread read, and
   ``engine_ratio_vs_read_all`` the same for the aggregating and writing part (``engine_seconds``);
   interleaved with those reads, the round's aggregation alone (fma-core's ``fedavg`` over the same
   files with the round's ``num_examples``, into buffers of its own: no write, no fsync, no hash):
   ``files_fedavg_gbps`` and ``files_fedavg_ratio_vs_read_all``, in wall time and per CPU second
   (``*_cpu``: the process's least CPU time, the read's over fedavg's).

All the aggregates must be bit-identical; the benchmark fails otherwise.

    python benchmarks/round.py [--quick] [--json]

Needs PostgreSQL (``--postgres``, default postgresql://postgres@127.0.0.1:5432/postgres, which
may create databases) and Redis (``--broker``, default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

TENSORS = 10
CELERY_WORKER = [sys.executable, "-m", "celery", "-A", "fma_aggregator", "worker", "-P", "solo", "-l", "INFO"]
CELERY_WORKER += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
TARGETS = {"round_gbps": 1.0, "speedup_2_workers": 1.5}
TIMED_ROUNDS = 3  # sharded rounds timed per block of fresh workers
BLOCKS = 2  # blocks per worker count, alternating 1 and 2 workers; the median of all their rounds counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N=20 updates of P=2M parameters")
    parser.add_argument("--updates", type=int, help="N, the number of updates (default 50)")
    parser.add_argument("--params", type=int, help="P, float32 parameters per update (default 10M)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--child-round", metavar="ID", help=argparse.SUPPRESS)  # the timed round's process
    args = parser.parse_args()
    if args.child_round:
        child_round(args.child_round)
        return
    count = args.updates or (20 if args.quick else 50)
    params = args.params or (2_000_000 if args.quick else 10_000_000)
    figures = run(count=count, params=params, postgres=args.postgres, broker=args.broker)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        report(figures)


def run(*, count: int, params: int, postgres: str, broker: str) -> dict[str, object]:
    database = f"fma_bench_{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="fma-bench-round-"))
    admin = _connect(postgres)
    admin.execute(f'CREATE DATABASE "{database}"')
    os.environ.update(
        DJANGO_SETTINGS_MODULE="fma_service.settings",
        FMA_DEVELOPMENT="1",
        FMA_DATA_DIR=str(work / "data"),
        FMA_WEIGHTS_DIR=str(work / "weights"),
        FMA_DATABASE_URL=urlunsplit(urlsplit(postgres)._replace(path=f"/{database}")),
        FMA_DB_CONN_MAX_AGE="0",
        FMA_AGGREGATOR_RUNNER="none",  # the benchmark starts each round itself
        FMA_BROKER_URL=broker,
        FMA_CELERY_QUEUE=f"fma-bench-{database}",
    )
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        per_block = 1 + TIMED_ROUNDS  # a warm-up round, then the timed ones
        blocks = [1, 2] * BLOCKS
        experiments, model_bytes = setup_round(count=count, params=params, copies=1 + len(blocks) * per_block)
        floors = read_floors(experiments[0], model_bytes, work / "weights")
        single = timed_child_round(experiments[0])
        timed: dict[int, list[tuple[float, list[tuple[str, float, float]]]]] = {1: [], 2: []}
        for n, workers in enumerate(blocks):  # alternating, so a change in the machine's load hits both
            ids = experiments[1 + n * per_block : 1 + (n + 1) * per_block]
            timed[workers] += celery_rounds(ids, workers=workers, shard_bytes=model_bytes // 2, work=work)
        (one, one_tasks), (two, two_tasks) = (_median(timed[1]), _median(timed[2]))
        one_stages, two_stages = stages(one, one_tasks), stages(two, two_tasks)
        from fma_django.models import ModelAggregate

        contents = {ModelAggregate.objects.get(experiment_id=e).content_id for e in experiments}
        if len(contents) != 1:
            raise SystemExit(f"the sharded aggregates differ from the unsharded one: {contents}")
        aggregate = ModelAggregate.objects.get(experiment_id=experiments[0])
        from django.db import connections

        connections.close_all()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(work, ignore_errors=True)
    input_bytes = count * model_bytes
    engine_gbps = input_bytes / aggregate.duration_seconds / 1e9
    wall, cpu = floors["wall"], floors["cpu"]
    read_all_gbps = input_bytes / wall["all"] / 1e9
    return {
        "updates": count,
        "params": params,
        "model_bytes": model_bytes,
        "round_seconds": round(single["seconds"], 3),
        "round_gbps": round(input_bytes / single["seconds"] / 1e9, 3),
        "peak_rss_bytes": single["peak_rss_bytes"],
        "peak_rss_limit_bytes": 2 * model_bytes + 300 * 1024**2,
        "engine_peak_memory_bytes": aggregate.peak_memory_bytes,
        "engine_seconds": round(aggregate.duration_seconds, 3),  # aggregating and writing, within the round
        "files_read_gbps": _significant(input_bytes / wall["one"] / 1e9),
        "files_read_all_gbps": _significant(read_all_gbps),
        "read_threads": floors["threads"],
        "files_fedavg_gbps": _significant(input_bytes / wall["fedavg"] / 1e9),
        "files_fedavg_ratio_vs_read_all": _significant(wall["all"] / wall["fedavg"]),
        "files_fedavg_ratio_vs_read_all_cpu": _significant(cpu["all"] / cpu["fedavg"]),
        "round_ratio_vs_read_all": _significant(input_bytes / single["seconds"] / 1e9 / read_all_gbps),
        "engine_ratio_vs_read_all": _significant(engine_gbps / read_all_gbps),
        "sharded_1_worker_seconds": round(one, 3),
        "sharded_2_workers_seconds": round(two, 3),
        "speedup_2_workers": round(one / two, 3),
        # what two workers could reach with two free cores: the serial tasks, then one shard's time
        "speedup_bound_2_workers": round(
            one_stages["busy"] / (one_stages["busy"] - one_stages["shards"] / 2), 3
        ),
        "serial_fraction_1_worker": round(1 - one_stages["shards"] / one_stages["busy"], 3),
        "stages_1_worker": one_stages,
        "stages_2_workers": two_stages,
        "bit_identical": True,
        "cpus": len(os.sched_getaffinity(0)),
    }


def setup_round(*, count: int, params: int, copies: int) -> tuple[list[str], int]:
    """N clients submit one update each through the services; the copies reuse the same update objects."""
    from django.contrib.auth.models import User

    from fma_core.weights import to_bytes
    from fma_django import ingestion, services
    from fma_django.models import ModelUpdate

    per_tensor = params // TENSORS
    spec = [{"name": f"layer{t}.weight", "dtype": "F32", "shape": [per_tensor]} for t in range(TENSORS)]
    developer = User.objects.create_user("bench")
    experiments = [
        services.experiment_create(
            developer=developer, name=f"bench-{n}", open_enrollment=True, tensor_spec=spec
        )
        for n in range(copies)
    ]
    rng = np.random.default_rng(0)
    for _ in range(count):
        client, _ = services.client_register(experiment=experiments[0])
        body = to_bytes({t["name"]: rng.random(per_tensor, dtype=np.float32) - 0.5 for t in spec})
        ingestion.update_submit(
            experiment=experiments[0],
            client=client,
            stream=io.BytesIO(body),
            num_examples=int(rng.integers(10, 1000)),
        )
    originals = list(ModelUpdate.objects.filter(experiment=experiments[0]))
    for copy in experiments[1:]:
        ModelUpdate.objects.bulk_create(
            ModelUpdate(
                experiment=copy,
                client=u.client,
                num_examples=u.num_examples,
                weights_key=u.weights_key,
                content_id=u.content_id,
                size_bytes=u.size_bytes,
            )
            for u in originals
        )
    return [str(e.pk) for e in experiments], per_tensor * TENSORS * 4


def read_floors(
    experiment_id: str, model_bytes: int, weights_dir: Path, passes: int = 5
) -> dict[str, dict[str, float] | int]:
    """Wall and CPU seconds of the best of ``passes`` reads of the round's update files
    (``read_floor.file_read``), on one thread and on as many as the round's aggregation uses, and of
    ``fedavg`` over the same files, alternating."""
    from read_floor import file_read

    from fma_core.aggregators import UpdateInput, create_aggregator
    from fma_core.aggregators.base import default_threads
    from fma_core.weights import TensorSpec, open_weights
    from fma_django.models import ModelUpdate

    rows = list(ModelUpdate.objects.filter(experiment_id=experiment_id))
    paths = [weights_dir / u.weights_key for u in rows]
    updates = [
        UpdateInput(str(u.pk), u.content_id, u.num_examples, lambda path=path: open_weights(path))
        for u, path in zip(rows, paths, strict=True)
    ]
    with updates[0].open() as first:
        spec = TensorSpec.from_reader(first)
    fedavg = create_aggregator("fedavg")
    threads = default_threads()
    runs = {
        "one": file_read(paths, model_bytes, 1),
        "all": file_read(paths, model_bytes, threads),
        "fedavg": lambda: fedavg.aggregate(updates, spec),
    }
    wall = dict.fromkeys(runs, math.inf)
    cpu = dict.fromkeys(runs, math.inf)
    for _ in range(passes):
        for name, run in runs.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            run()
            wall[name] = min(wall[name], time.perf_counter() - started)
            cpu[name] = min(cpu[name], time.process_time() - cpu_started)
    return {"wall": wall, "cpu": cpu, "threads": threads}


def timed_child_round(experiment_id: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, "--child-round", experiment_id], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_round(experiment_id: str) -> None:
    """In a fresh process: one round, timed from claim to commit; prints seconds and this process's peak RSS."""
    import django

    django.setup()
    from fma_aggregator.engine import build_engine
    from fma_core.peak_memory import lifetime_peak_rss

    engine = build_engine()
    started = time.perf_counter()
    outcome = engine.run_round(experiment_id)
    seconds = time.perf_counter() - started
    if outcome.status != "committed":
        raise SystemExit(f"the round did not commit: {outcome}")
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": lifetime_peak_rss()}))


def celery_rounds(
    experiment_ids: list[str], *, workers: int, shard_bytes: int, work: Path
) -> list[tuple[float, list[tuple[str, float, float]]]]:
    """Seconds from enqueueing a round to its commit, on ``workers`` fresh Celery worker processes, and
    that round's tasks and stages as the workers logged them (see ``logged_tasks``), for each round
    but the first, which warms the workers up (database connections, first imports).

    The commit's time is the one the committing worker logs right after it, not when this process
    notices: polling the database fast enough to time it would take CPU from the workers, more
    from two busy workers than from one, so this process only checks every 50 ms to go on.
    """
    from fma_aggregator.celery import app
    from fma_django.models import ModelAggregate

    env = {**os.environ, "FMA_SHARD_BYTES": str(shard_bytes), "FMA_AGGREGATION_THREADS": "1"}
    started = []
    try:
        for n in range(workers):
            log = work / f"worker-{experiment_ids[0]}-{n}.log"
            process = subprocess.Popen(
                [*CELERY_WORKER, "-n", f"bench{n}@%h"],
                env=env,
                stdout=open(log, "wb"),  # noqa: SIM115 - the child owns it
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started.append((process, log))
        for _, log in started:
            _wait(lambda log=log: b" ready." in log.read_bytes(), f"worker ready ({log})", timeout=120)
        begun = []
        for experiment_id in experiment_ids:
            begun.append(time.time())
            app.send_task("fma.run_round", args=[experiment_id])
            committed = ModelAggregate.objects.filter(experiment_id=experiment_id)
            _wait(committed.exists, "a round", pause=0.05)
    finally:
        for process, _ in started:
            os.killpg(process.pid, signal.SIGTERM)
        for process, _ in started:
            process.wait(timeout=60)
    tasks = [task for _, log in started for task in logged_tasks(log.read_text(errors="replace"))]
    rounds = []
    for begun_at, next_begun_at in itertools.pairwise([*begun, math.inf]):
        mine = sorted(t for t in tasks if begun_at - 0.01 <= t[1] < next_begun_at)
        (committed_at,) = [at + seconds for name, at, seconds in mine if name == "combine"]
        rounds.append((committed_at - begun_at, mine))
    return rounds[1:]


def _median(rounds: list[tuple[float, list]]) -> tuple[float, list]:
    return sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]


_LOGGED = re.compile(
    r"^\[(?P<at>[\d-]+ [\d:,]+): INFO/\w+\] (?:Task (?P<task>[\w.]+)\[(?P<id>[\w-]+)\] "
    r"(?:(?P<received>received)|succeeded in (?P<seconds>[\d.e-]+)s)"
    r"|round \d+ of \d+: (?:shard \d+ aggregated in (?P<shard>[\d.]+) s"
    r"|\d+ shards combined and committed in (?P<combine>[\d.]+) s))",
    re.MULTILINE,
)


def logged_tasks(log: str) -> list[tuple[str, float, float]]:
    """(task or stage, started at, seconds) of what a worker's INFO log shows: each task received and
    succeeded, and the round engine's own lines for a shard's aggregation and the combine."""
    received: dict[str, float] = {}
    done = []
    for match in _LOGGED.finditer(log):
        at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if match["received"]:
            received[match["id"]] = at
        elif match["seconds"] and match["id"] in received:
            done.append((match["task"], received[match["id"]], float(match["seconds"])))
        elif match["shard"] or match["combine"]:
            seconds = float(match["shard"] or match["combine"])
            done.append(("shards" if match["shard"] else "combine", at - seconds, seconds))
    return done


def stages(wall: float, tasks: list[tuple[str, float, float]]) -> dict[str, float]:
    """Where a sharded round's time went: the ``run_round`` task, the shards' aggregation (summed), the
    combine, the time two tasks ran at once, and ``idle``: the wall time no task ran (hand-offs
    between tasks, queueing, the benchmark's polling)."""
    figures = {"run_round": 0.0, "shards": 0.0, "combine": 0.0}
    for name, _, seconds in tasks:
        key = name.removeprefix("fma.")
        if key in figures:
            figures[key] += seconds
    runs = [(at, seconds) for name, at, seconds in tasks if name.startswith("fma.")]
    edges = sorted([(at, 1) for at, _ in runs] + [(at + seconds, -1) for at, seconds in runs])
    busy = overlapped = 0.0
    running = 0
    for (at, step), (following, _) in itertools.pairwise(edges):
        running += step
        busy += (following - at) if running else 0.0
        overlapped += (following - at) if running > 1 else 0.0
    figures.update(busy=busy, overlapped=overlapped, idle=max(0.0, wall - busy))
    return {name: round(value, 3) for name, value in figures.items()}


def report(figures: dict[str, object]) -> None:
    model = figures["model_bytes"]
    limit = figures["peak_rss_limit_bytes"]
    mark = lambda ok: "ok" if ok else "MISSED"  # noqa: E731
    print(
        f"round of {figures['updates']} updates × {figures['params']:,} float32 ({model / 1e6:.0f} MB model)"
    )
    print(
        f"  one round, in-process      {figures['round_seconds']:8.3f} s   "
        f"{figures['round_gbps']:6.2f} GB/s   target ≥ {TARGETS['round_gbps']}  {mark(figures['round_gbps'] >= TARGETS['round_gbps'])}"
    )
    print(
        f"  read floor, the same files {figures['files_read_gbps']:6.2f} GB/s on 1 thread, "
        f"{figures['files_read_all_gbps']:.2f} GB/s on {figures['read_threads']} (preadv + a.sum() of each block): "
        f"the round {figures['round_ratio_vs_read_all']:.2f}×, its aggregating and writing "
        f"{figures['engine_ratio_vs_read_all']:.2f}× the {figures['read_threads']}-thread read"
    )
    print(
        f"  peak RSS of that process   {figures['peak_rss_bytes'] / 1e6:8.0f} MB   "
        f"limit 2 × model + 300 MB = {limit / 1e6:.0f} MB  {mark(figures['peak_rss_bytes'] <= limit)}"
    )
    print(f"  sharded, 1 Celery worker   {figures['sharded_1_worker_seconds']:8.3f} s")
    print(
        f"  sharded, 2 Celery workers  {figures['sharded_2_workers_seconds']:8.3f} s   speedup "
        f"{figures['speedup_2_workers']:.2f}×  target ≥ {TARGETS['speedup_2_workers']}  "
        f"{mark(figures['speedup_2_workers'] >= TARGETS['speedup_2_workers'])}   ({figures['cpus']} CPUs)"
    )
    for workers in ("1_worker", "2_workers"):
        stage = figures[f"stages_{workers}"]
        print(
            f"    {workers.replace('_', ' '):9}  run_round {stage['run_round']:.3f} s, shards "
            f"{stage['shards']:.3f} s, combine {stage['combine']:.3f} s, "
            f"overlapped {stage['overlapped']:.3f} s, idle {stage['idle']:.3f} s"
        )
    print(
        f"  serial fraction (1 worker) {figures['serial_fraction_1_worker']:.2f}; "
        f"speedup those stages allow on 2 free cores {figures['speedup_bound_2_workers']:.2f}"
    )
    print("  every aggregate bit-identical to the unsharded one")


def _significant(value: float) -> float:
    """Four significant digits: readable, and a small rate or ratio is never rounded to zero."""
    return float(f"{value:.4g}")


def _wait(condition, what: str, *, timeout: float = 600, pause: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(pause)


def _connect(url: str):
    import psycopg

    parts = urlsplit(url)
    return psycopg.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password,
        dbname=parts.path.lstrip("/") or "postgres",
        autocommit=True,
    )


if __name__ == "__main__":
    main()
