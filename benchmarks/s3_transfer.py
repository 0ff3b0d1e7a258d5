"""Upload, aggregate and download N updates through presigned S3 URLs, against the same through the API.

Two services on loopback, each ``python -m fma_service`` (uvicorn, one worker, four threads)
with its own temporary data dir and SQLite database, and ``FMA_AGGREGATOR_RUNNER=none`` so that
the benchmark runs the round itself:

- **S3**: ``FMA_WEIGHT_STORE=s3`` on a bucket of SeaweedFS's S3 gateway (``weed server -s3``,
  started by ``seaweed.py`` on loopback with fake credentials; ``--server moto``: moto's S3
  server, ``python -m moto.server``, instead). Clients PUT their parts to presigned multipart
  URLs; the round reads updates from S3 by ranged GETs; the download is a 302 to a presigned GET.
- **API** (the baseline): the local directory store; the parts and the download go through the API.

For each: an experiment of N updates × P float32 parameters in 10 tensors (default N=8, P=8M,
32 MB per update; ``--quick``: N=4, P=1M), N clients enrolled in it. Then, timed:

1. each client pushes its update with ``fma_client.Client.push`` (an upload session: SHA-256,
   8 MiB parts in parallel, complete — on S3 the server then reads the object back to check its
   size, hash and values); ``*_upload_mbps`` = model bytes / seconds over the N pushes;
2. the round, in a fresh process with the service's environment (this file's ``--child-round``:
   ``fma_aggregator``'s engine, ``run_round``), timed from claim to commit;
   ``aggregate_*_gbps`` = update bytes / seconds; ``aggregator_peak_rss_bytes`` is that
   process's ``VmHWM`` (Python, Django, numpy and boto3 included), read just before it exits;
3. one client's ``Client.pull()`` of the new aggregate; ``*download_mbps`` = model bytes / seconds.

``upload_ratio``, ``aggregate_ratio``, ``download_ratio``: the S3 path's speed over the API
path's, both measured in the same run (above 1: S3 is faster). Both aggregates should be
bit-identical (same updates, same weights): ``bit_identical`` says.

The S3 round's floor: ``plain_read_gbps`` is a plain read of the same N update objects from the
same server, each cut in ``READ_RANGE`` ranged GETs fetched by ``READ_THREADS`` boto3 threads
into memory (nothing else done with them), in a fresh process like the round's, once before the
round and once after (the mean). ``round_read_ratio`` = ``aggregate_from_s3_gbps`` /
``plain_read_gbps``; target ≥ 0.5 (``round_read_target_met``). The round does more than read:
it claims, checks each update's header, writes the aggregate to S3 and commits. So the run also
measures ``plain_write_gbps``, a plain write of an object of the model's size (``WRITE_PART``
parts, ``READ_THREADS`` at once, boto3's managed transfer; fresh process, before and after the
round), and ``round_floor_seconds``: the time to read the N updates and write one model at the
two plain rates; ``round_floor_ratio`` = that floor / the round's ``round_seconds``.

Target: the aggregator's peak RSS ≤ 2 × model bytes + 300 MiB, whatever N (``rss_target_met``).
MB = 10^6 bytes, GB = 10^9 bytes. Loopback figures: SeaweedFS's master, volume server, filer and
gateway share the machine's cores with the service, the round and the reader.

moto (``--server moto``) answers every ranged GET by reading the whole object into memory, so
each tensor block the aggregator fetches costs a whole update there: its round figures say more
about moto than about S3.

    python benchmarks/s3_transfer.py [--quick] [--updates N] [--params P] [--server seaweedfs|moto] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests
from seaweed import seaweedfs

from fma_client import Client

TENSORS = 10
PART_BYTES = 8 * 1024**2
RSS_ALLOWANCE = 300 * 1024**2
BUCKET = "fma-bench"
REGION = "us-east-1"
READ_THREADS = 8
READ_RANGE = 8 * 1024**2
WRITE_PART = 16 * 1024**2  # the S3 store's default part size, in which the round writes the aggregate
ROUND_READ_TARGET = 0.5
NOTES = {
    "seaweedfs": "SeaweedFS on loopback: its processes share the cores with the service and the round",
    "moto": "moto reads the whole object for every ranged GET: S3 reads from S3 are slow here, not on AWS",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N=4 updates of P=1M parameters")
    parser.add_argument("--updates", type=int, help="N, the number of updates (default 8)")
    parser.add_argument("--params", type=int, help="P, float32 parameters per update (default 8M)")
    parser.add_argument("--server", choices=sorted(NOTES), default="seaweedfs", help="the S3 server")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child-read", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-write", metavar="BYTES", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-setup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-round", metavar="ID", help=argparse.SUPPRESS)
    args = parser.parse_args()
    count = args.updates or (4 if args.quick else 8)
    params = args.params or (1_000_000 if args.quick else 8_000_000)
    if count < 1:
        parser.error("--updates must be at least 1")
    if params < TENSORS or params % TENSORS:
        parser.error(
            f"--params must be a positive multiple of {TENSORS} (the update has {TENSORS} equal tensors)"
        )
    if args.child_setup:
        child_setup(count=count, params=params)
    elif args.child_round:
        child_round(args.child_round)
    elif args.child_read:
        child_read()
    elif args.child_write:
        child_write(args.child_write)
    else:
        figures = run(count=count, params=params, server=args.server)
        print(json.dumps(figures, indent=2) if args.json else report(figures))


def run(*, count: int, params: int, server: str = "seaweedfs") -> dict[str, object]:
    """Both paths, S3 first, each on its own service; returns the figures."""
    work = Path(tempfile.mkdtemp(prefix="fma-bench-s3-"))
    env = aws_environment()
    try:
        with s3_server(server, env, work) as s3_env:
            s3 = one_path(s3_env, work / "s3", count=count, params=params, floor=True)
        local = one_path(env, work / "local", count=count, params=params)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    identical = s3["model"].keys() == local["model"].keys() and all(
        np.array_equal(s3["model"][name], local["model"][name]) for name in local["model"]
    )
    model_bytes = params * 4
    update_bytes = count * model_bytes
    target = 2 * model_bytes + RSS_ALLOWANCE
    aggregate_gbps = update_bytes / 1e9 / s3["round"]["seconds"]
    reads, writes = s3["plain_reads"], s3["plain_writes"]
    read_gbps = sum(read["bytes"] for read in reads) / 1e9 / sum(read["seconds"] for read in reads)
    write_gbps = sum(write["bytes"] for write in writes) / 1e9 / sum(write["seconds"] for write in writes)
    # what the server allows the round: its updates read and its aggregate written at the plain rates
    floor_seconds = update_bytes / 1e9 / read_gbps + model_bytes / 1e9 / write_gbps
    return {
        "updates": count,
        "params": params,
        "model_bytes": model_bytes,
        "presigned_upload_mbps": round(update_bytes / 1e6 / s3["push_seconds"], 1),
        "api_upload_mbps": round(update_bytes / 1e6 / local["push_seconds"], 1),
        "aggregate_from_s3_gbps": round(aggregate_gbps, 3),
        "plain_read_gbps": round(read_gbps, 3),
        "plain_read_threads": READ_THREADS,
        "plain_read_range_bytes": READ_RANGE,
        "round_read_ratio": round(aggregate_gbps / read_gbps, 3),
        "round_read_target_met": aggregate_gbps / read_gbps >= ROUND_READ_TARGET,
        "plain_write_gbps": round(write_gbps, 3),
        "round_floor_seconds": floor_seconds,
        "round_seconds": s3["round"]["seconds"],
        "round_floor_ratio": round(floor_seconds / s3["round"]["seconds"], 3),
        "aggregate_local_gbps": round(update_bytes / 1e9 / local["round"]["seconds"], 3),
        "download_mbps": round(model_bytes / 1e6 / s3["pull_seconds"], 1),
        "api_download_mbps": round(model_bytes / 1e6 / local["pull_seconds"], 1),
        # S3 path / API path, from the unrounded times: above 1, the S3 path is faster
        "upload_ratio": round(local["push_seconds"] / s3["push_seconds"], 3),
        "aggregate_ratio": round(local["round"]["seconds"] / s3["round"]["seconds"], 3),
        "download_ratio": round(local["pull_seconds"] / s3["pull_seconds"], 3),
        "aggregator_peak_rss_bytes": s3["round"]["peak_rss_bytes"],
        "aggregator_local_peak_rss_bytes": local["round"]["peak_rss_bytes"],
        "rss_target_bytes": target,
        "rss_target_met": s3["round"]["peak_rss_bytes"] <= target,
        "bit_identical": identical,
        "server": server,
        "note": NOTES[server],
        "load_average": os.getloadavg(),
    }


def one_path(
    env: dict[str, str], data_dir: Path, *, count: int, params: int, floor: bool = False
) -> dict[str, object]:
    """Push N updates to a fresh service, run the round in a child process, pull the aggregate; with
    ``floor``, a plain read of the updates' objects (``--child-read``) and a plain write of an
    object of the model's size (``--child-write``) before and after the round."""
    env = {
        **env,
        "FMA_DATA_DIR": str(data_dir),
        "FMA_SECRET_KEY": "benchmark",
        "FMA_DEVELOPMENT": "1",  # plain http on loopback: no redirect to https
        "FMA_UPLOAD_PART_BYTES": str(PART_BYTES),
        "FMA_AGGREGATOR_RUNNER": "none",
        "FMA_LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "fma_service.settings",
    }
    data_dir.mkdir(parents=True)
    with service(env, data_dir) as url:
        setup = json.loads(child(["--child-setup", "--updates", str(count), "--params", str(params)], env))
        push_seconds = 0.0
        for n, credential in enumerate(setup["credentials"]):
            update = make_update(params, seed=n)  # made before the clock starts: no training in the timing
            with Client(url, setup["experiment"], token=credential, quiet=True, timeout=(10, 600)) as client:
                started = time.perf_counter()
                client.push(update, num_examples=100 + n)
                push_seconds += time.perf_counter() - started
        del update
        write = ["--child-write", str(params * 4)]
        reads = [json.loads(child(["--child-read"], env))] if floor else []
        writes = [json.loads(child(write, env))] if floor else []
        outcome = json.loads(child(["--child-round", str(setup["experiment"])], env))
        reads += [json.loads(child(["--child-read"], env))] if floor else []
        writes += [json.loads(child(write, env))] if floor else []
        with Client(url, setup["experiment"], token=credential, quiet=True, timeout=(10, 600)) as client:
            started = time.perf_counter()
            model = client.pull()
            pull_seconds = time.perf_counter() - started
    if model.aggregate is None:
        raise SystemExit("pull() returned no aggregate after the round")
    return {
        "push_seconds": push_seconds,
        "round": outcome,
        "pull_seconds": pull_seconds,
        "model": model.weights,
        "plain_reads": reads,
        "plain_writes": writes,
    }


def make_update(params: int, *, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    per_tensor = params // TENSORS
    return {f"layer{t}.weight": rng.random(per_tensor, dtype=np.float32) - 0.5 for t in range(TENSORS)}


def child(arguments: list[str], env: dict[str, str]) -> str:
    """Run this file in a child mode with ``env``; its last line of output is its answer."""
    result = subprocess.run(
        [sys.executable, __file__, *arguments], env=env, capture_output=True, text=True, timeout=1800
    )
    if result.returncode:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{result.stderr[-4000:]}")
    return result.stdout.strip().splitlines()[-1]


def child_setup(*, count: int, params: int) -> None:
    """In the service's environment: a developer, an experiment of the update's spec, N enrolled clients."""
    import django

    django.setup()
    from django.contrib.auth.models import User

    from fma_django import services

    spec = [
        {"name": f"layer{t}.weight", "dtype": "F32", "shape": [params // TENSORS]} for t in range(TENSORS)
    ]
    developer = User.objects.create_user("bench")
    experiment = services.experiment_create(
        developer=developer, name="s3-transfer", open_enrollment=True, tensor_spec=spec
    )
    credentials = [services.client_register(experiment=experiment)[1] for _ in range(count)]
    print(json.dumps({"experiment": experiment.pk, "credentials": credentials}))


def child_round(experiment_id: str) -> None:
    """In a fresh process: one round, timed from claim to commit; prints seconds and this process's VmHWM."""
    from fma_aggregator.django_setup import setup_django

    setup_django()
    from fma_aggregator.engine import build_engine
    from fma_core.peak_memory import lifetime_peak_rss

    engine = build_engine()
    started = time.perf_counter()
    outcome = engine.run_round(experiment_id)
    seconds = time.perf_counter() - started
    if outcome.status != "committed":
        raise SystemExit(f"the round did not commit: {outcome}")
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": lifetime_peak_rss()}))


def child_read() -> None:
    """The round's floor, in a fresh process with the service's S3 variables: every update object
    under the store's prefix, cut in ``READ_RANGE`` ranged GETs, fetched by ``READ_THREADS`` threads
    of one boto3 client into a buffer each; prints the bytes and seconds."""
    env = os.environ
    s3 = _gateway_client()
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=env["FMA_S3_BUCKET"], Prefix=env["FMA_S3_PREFIX"] + "updates/"
    )
    objects = [item for page in pages for item in page.get("Contents", [])]
    ranges = [
        (item["Key"], start, min(start + READ_RANGE, item["Size"]))
        for item in objects
        for start in range(0, item["Size"], READ_RANGE)
    ]
    local = threading.local()

    def fetch(piece: tuple[str, int, int]) -> int:
        key, start, stop = piece
        if getattr(local, "buffer", None) is None:
            local.buffer = memoryview(bytearray(READ_RANGE))
        view = local.buffer[: stop - start]
        body = s3.get_object(Bucket=env["FMA_S3_BUCKET"], Key=key, Range=f"bytes={start}-{stop - 1}")["Body"]
        done = 0
        while done < len(view):
            got = body.readinto(view[done:])
            if not got:
                raise SystemExit(f"{key} ended at {start + done} while it was read")
            done += got
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(READ_THREADS) as pool:
        total = sum(pool.map(fetch, ranges))
    seconds = time.perf_counter() - started
    print(json.dumps({"bytes": total, "seconds": seconds, "objects": len(objects)}))


def child_write(size: int) -> None:
    """The round's write floor, in a fresh process with the service's S3 variables: one object of
    ``size`` bytes written as a multipart upload of ``WRITE_PART`` parts, ``READ_THREADS`` parts at
    once (boto3's managed transfer), then deleted; prints the bytes and seconds."""
    from boto3.s3.transfer import TransferConfig

    env = os.environ
    s3 = _gateway_client()
    data = np.random.default_rng(0).bytes(size)
    key = env["FMA_S3_PREFIX"] + "plain-write"
    config = TransferConfig(
        multipart_threshold=WRITE_PART, multipart_chunksize=WRITE_PART, max_concurrency=READ_THREADS
    )
    started = time.perf_counter()
    s3.upload_fileobj(io.BytesIO(data), env["FMA_S3_BUCKET"], key, Config=config)
    seconds = time.perf_counter() - started
    s3.delete_object(Bucket=env["FMA_S3_BUCKET"], Key=key)
    print(json.dumps({"bytes": size, "seconds": seconds}))


def _gateway_client():
    """A boto3 client of the gateway the store's environment names, with a connection per read thread."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        region_name=os.environ["FMA_S3_REGION"],
        endpoint_url=os.environ["FMA_S3_ENDPOINT_URL"],
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=READ_THREADS),
    )


def aws_environment() -> dict[str, str]:
    """This environment without the machine's AWS settings, with fake credentials: nothing reaches AWS."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "FMA_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


@contextmanager
def s3_server(server: str, env: dict[str, str], work: Path) -> Iterator[dict[str, str]]:
    """The S3 server with the benchmark's bucket; yields ``env`` with the service's S3 variables."""
    if server == "seaweedfs":
        with seaweedfs(work / "seaweedfs", buckets=[BUCKET]) as gateway:
            yield {**env, **gateway.store_environment(BUCKET)}
        return
    with moto_server(env, work) as endpoint:
        yield {
            **env,
            "FMA_WEIGHT_STORE": "s3",
            "FMA_S3_BUCKET": BUCKET,
            "FMA_S3_PREFIX": "fma/",
            "FMA_S3_ENDPOINT_URL": endpoint,
            "FMA_S3_REGION": REGION,
            "FMA_S3_ADDRESSING_STYLE": "path",
        }


@contextmanager
def moto_server(env: dict[str, str], work: Path) -> Iterator[str]:
    """moto's S3 server in its own process, with the benchmark's bucket; yields its endpoint URL."""
    import boto3
    from botocore.config import Config

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with started(command, env, work / "moto.log", ready_url=endpoint + "/moto-api/"):
        s3 = boto3.session.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]
        ).client(
            "s3", region_name=REGION, endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"})
        )
        s3.create_bucket(Bucket=BUCKET)
        yield endpoint


@contextmanager
def service(env: dict[str, str], data_dir: Path) -> Iterator[str]:
    """``python -m fma_service`` on a free loopback port; yields its URL once it answers."""
    port = free_port()
    env = {**env, "FMA_BIND": f"127.0.0.1:{port}", "FMA_WORKERS": "1", "FMA_THREADS": "4"}
    url = f"http://127.0.0.1:{port}"
    with started(
        [sys.executable, "-m", "fma_service"], env, data_dir / "service.log", ready_url=url + "/api/v1/"
    ):
        yield url


@contextmanager
def started(command: list[str], env: dict[str, str], log: Path, *, ready_url: str) -> Iterator[None]:
    """A server process, stopped on the way out; waits until ``ready_url`` answers (any status)."""
    with open(log, "wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{' '.join(command[1:4])} did not start:\n{log.read_text()[-4000:]}")
            try:
                requests.get(ready_url, timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or too busy to answer
                time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report(figures: dict[str, object]) -> str:
    model = figures["model_bytes"]
    target = figures["rss_target_bytes"]
    peak = figures["aggregator_peak_rss_bytes"]
    rows = [
        ("upload (Client.push)", "presigned_upload_mbps", "api_upload_mbps", "upload_ratio", "MB/s", ".1f"),
        (
            "round (claim → commit)",
            "aggregate_from_s3_gbps",
            "aggregate_local_gbps",
            "aggregate_ratio",
            "GB/s",
            ".3f",
        ),
        ("download (Client.pull)", "download_mbps", "api_download_mbps", "download_ratio", "MB/s", ".1f"),
    ]
    lines = [
        f"{figures['updates']} updates × {figures['params']:,} float32 ({model / 1e6:.0f} MB each), loopback",
        f"  {'':<24}{'S3 (' + figures['server'] + '), presigned':>22}{'API, local store':>18}{'S3 / API':>10}",
    ]
    for label, s3_key, api_key, ratio_key, unit, digits in rows:
        s3, api = format(figures[s3_key], digits), format(figures[api_key], digits)
        lines.append(f"  {label:<24}{s3:>17} {unit}{api:>13} {unit}{figures[ratio_key]:>9.2f}×")
    lines += [
        f"  aggregator peak RSS (S3)  {peak / 1e6:.0f} MB; target 2 × model + 300 MiB = {target / 1e6:.0f} MB: "
        + ("met" if figures["rss_target_met"] else "MISSED"),
        f"  aggregator peak RSS (local store)  {figures['aggregator_local_peak_rss_bytes'] / 1e6:.0f} MB",
        f"  plain read of the same objects ({figures['plain_read_threads']} threads, "
        f"{figures['plain_read_range_bytes'] >> 20} MiB ranged GETs)  {figures['plain_read_gbps']:.3f} GB/s; "
        f"round / read {figures['round_read_ratio']:.2f}×, target ≥ {ROUND_READ_TARGET}: "
        + ("met" if figures["round_read_target_met"] else "MISSED"),
        f"  plain write of the model's size ({figures['plain_write_gbps']:.3f} GB/s): the round could take "
        f"{figures['round_floor_seconds']:.2f} s reading and writing at these rates, it took "
        f"{figures['round_seconds']:.2f} s: {figures['round_floor_ratio']:.2f}× that floor",
        "  the two aggregates are " + ("bit-identical" if figures["bit_identical"] else "DIFFERENT: a bug"),
        f"  note: {figures['note']}",
        "  load average {:.2f} {:.2f} {:.2f} (1, 5, 15 min) at the end".format(*figures["load_average"]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
