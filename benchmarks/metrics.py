"""What metrics cost: API requests with and without them, and one scrape of ``/metrics``.

Starts two ``fma-server`` processes side by side on loopback (SQLite, a weight directory, one
worker each, the runner ``none``): one with ``FMA_METRICS=prometheus`` (the default: django-prometheus's
request middleware, FMA's counters, multiprocess mode as fma-server always runs it) and one with
``FMA_METRICS=off``. The same requests then go to both, alternating which goes first, so that both
see the same machine: the liveness probe (the cheapest request, where the middleware weighs
most), a developer listing experiments (authentication and a query), and a client pushing a small
update (the upload endpoint, whose accepted update is also counted as an FMA figure). Each figure
is the median time of ``--requests`` requests, from the request sent to the answer read; the
difference is what metrics add to one request, the ratio the same as a share. Then a scrape of the
first server (every metric, with the database's gauges) is timed and its size measured.

On a busy machine two servers' medians differ by more than the middleware costs, so the same
comparison also runs in this process, without HTTP: Django's own request handler, with the
service's middleware and with the same list less the two metrics middlewares, alternating, on the liveness
probe (``in_process``); and one FMA figure recorded (an accepted update) in multiprocess mode
(``record_us``). Those two are what metrics add to a request, CPU only.

Run: ``.venv/bin/python benchmarks/metrics.py [--requests N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

from fma_client import Developer
from fma_core.weights import to_bytes

PASSWORD = "a-benchmark-password"
TOKEN = secrets.token_urlsafe(24)
METRICS_MIDDLEWARE = {
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "fma_service.observability.middleware.RequestMetricsMiddleware",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One fma-server with its own data directory, a developer, an experiment and an enrolled client."""

    def __init__(self, metrics: str, directory: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FMA_", "DJANGO_", "PROMETHEUS_"))},
            "FMA_DATA_DIR": str(directory / metrics),
            "FMA_DEVELOPMENT": "1",
            "FMA_BIND": f"127.0.0.1:{port}",
            "FMA_WORKERS": "1",
            "FMA_LOG_LEVEL": "WARNING",
            "FMA_AGGREGATOR_RUNNER": "none",
            "FMA_METRICS": metrics,
            "FMA_METRICS_TOKEN": TOKEN,
            "FMA_THROTTLE_ANON": "1000000/min",
            "FMA_THROTTLE_REGISTER": "1000000/min",
            "DJANGO_SETTINGS_MODULE": "fma_service.settings",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fma_service"], env=self.env, stdout=subprocess.DEVNULL
        )
        self.http = requests.Session()

    def prepare(self) -> None:
        deadline = time.monotonic() + 180
        while True:
            try:
                self.http.get(self.url + "/healthz", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"fma-server ({self.env['FMA_METRICS']}) did not start") from None
                time.sleep(0.1)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "django",
                "createsuperuser",
                "--noinput",
                "--username",
                "bench",
                "--email",
                "b@example.com",
            ],
            env={**self.env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
            check=True,
            capture_output=True,
        )
        developer = Developer.login(self.url, "bench", PASSWORD, quiet=True)
        self.developer = f"Token {developer.token}"
        experiment = developer.create_experiment(
            {"name": "metrics", "aggregator": "fedavg", "enrollment": "open"}
        )
        self.path = f"/api/v1/models/{experiment['id']}/"
        registered = self.http.post(self.url + self.path + "register_client/", timeout=30)
        registered.raise_for_status()
        self.client = f"Client {registered.json()['credential']}"
        self.pushes = 0

    def healthz(self) -> None:
        self._check(self.http.get(self.url + "/healthz", timeout=30), 200)

    def list_experiments(self) -> None:
        self._check(
            self.http.get(
                self.url + "/api/v1/models/", headers={"Authorization": self.developer}, timeout=30
            ),
            200,
        )

    def push(self) -> None:
        self.pushes += 1  # a new update each time: the same one again would be an idempotent replay
        body = to_bytes({"w": np.full(256, self.pushes, dtype=np.float32)})
        headers = {
            "Authorization": self.client,
            "Content-Type": "application/octet-stream",
            "X-FMA-Num-Examples": "1",
        }
        self._check(
            self.http.post(self.url + self.path + "upload_update/", data=body, headers=headers, timeout=30),
            201,
        )

    @staticmethod
    def _check(response: requests.Response, status: int) -> None:
        if response.status_code != status:
            raise RuntimeError(
                f"{response.request.method} {response.url}: {response.status_code} {response.text[:200]}"
            )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def timed(call: Callable[[], None]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def compare(with_metrics: Server, without: Server, kind: str, count: int) -> dict[str, float]:
    """Median microseconds of ``count`` requests of one kind to each server, taken in alternating order."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for number in range(count):
        order = (True, False) if number % 2 == 0 else (False, True)
        for metrics in order:
            server = with_metrics if metrics else without
            times[metrics].append(timed(getattr(server, kind)))
    on, off = (statistics.median(times[m]) * 1e6 for m in (True, False))
    return {
        "with_us": round(on, 1),
        "without_us": round(off, 1),
        "added_us": round(on - off, 1),
        "ratio": round(on / off, 3),
    }


def scrape_cost(server: Server, count: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    sizes, times = [], []
    for _ in range(count):
        started = time.perf_counter()
        answer = server.http.get(server.url + "/metrics", headers=headers, timeout=30)
        times.append(time.perf_counter() - started)
        answer.raise_for_status()
        sizes.append(len(answer.content))
    return {"scrape_ms": round(statistics.median(times) * 1e3, 2), "scrape_bytes": sizes[-1]}


def in_process(count: int, directory: Path) -> dict[str, float]:
    """Django's handler in this process, with and without the metrics middleware; and one recorded figure."""
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "fma_service.settings",
            "FMA_DATA_DIR": str(directory / "in-process"),
            "FMA_DEVELOPMENT": "1",
            "FMA_ALLOWED_HOSTS": "testserver",  # the name Django's test client sends
            "FMA_METRICS": "prometheus",
            "PROMETHEUS_MULTIPROC_DIR": str(directory / "in-process-metrics"),
        }
    )
    (directory / "in-process-metrics").mkdir()
    import django

    django.setup()
    from django.conf import settings
    from django.test import Client, override_settings

    from fma_django.telemetry import Observation
    from fma_service.observability.prometheus import record

    clients = {True: Client()}
    with override_settings(MIDDLEWARE=[m for m in settings.MIDDLEWARE if m not in METRICS_MIDDLEWARE]):
        clients[False] = Client()
        clients[False].get("/healthz")  # its middleware chain is built now, without the two
    times: dict[bool, list[float]] = {True: [], False: []}
    for number in range(count + count // 10):
        for metrics in (True, False) if number % 2 == 0 else (False, True):
            started = time.perf_counter()
            answer = clients[metrics].get("/healthz")
            if number >= count // 10:  # the first tenth warms up
                times[metrics].append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.content
    on, off = (statistics.median(times[m]) * 1e6 for m in (True, False))
    observation = Observation("update_accepted", "1", size_bytes=1000)
    record(observation)  # the first one makes the process's files
    started = time.perf_counter()
    for _ in range(count):
        record(observation)
    record_us = (time.perf_counter() - started) / count * 1e6
    return {
        "with_us": round(on, 1),
        "without_us": round(off, 1),
        "added_us": round(on - off, 1),
        "ratio": round(on / off, 3),
        "record_us": round(record_us, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests of each kind to each server")
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="fma-bench-metrics-"))
    servers = [Server("prometheus", directory), Server("off", directory)]
    try:
        for server in servers:
            server.prepare()
        with_metrics, without = servers
        warm = max(10, args.requests // 20)
        for kind in ("healthz", "list_experiments", "push"):
            compare(with_metrics, without, kind, warm)
        results = {
            kind: compare(with_metrics, without, kind, args.requests)
            for kind in ("healthz", "list_experiments", "push")
        }
        results.update(scrape_cost(with_metrics, args.scrapes))
        results["requests"] = args.requests
    finally:
        for server in servers:
            server.stop()
    results["in_process"] = in_process(args.requests * 5, directory)

    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.requests} requests of each kind to each server, median; loopback HTTP, one worker each")
    print(f"{'request':<18}{'with metrics':>14}{'without':>12}{'added':>10}{'ratio':>8}")
    for kind in ("healthz", "list_experiments", "push"):
        row = results[kind]
        print(
            f"{kind:<18}{row['with_us']:>11.0f} µs{row['without_us']:>9.0f} µs{row['added_us']:>7.0f} µs{row['ratio']:>8.3f}"
        )
    print(f"one scrape of /metrics: {results['scrape_ms']:.2f} ms, {results['scrape_bytes']:,} bytes")
    row = results["in_process"]
    print(
        f"in process, Django's handler, GET /healthz ({args.requests * 5} each): {row['with_us']:.0f} µs with "
        f"metrics, {row['without_us']:.0f} µs without: {row['added_us']:+.0f} µs ({row['ratio']:.3f}); "
        f"one FMA figure recorded: {row['record_us']:.1f} µs"
    )


if __name__ == "__main__":
    main()
