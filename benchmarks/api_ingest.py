"""Ingesting one update through the API: safetensors streamed to the weight store vs the v1 JSON path.

Starts the service (uvicorn) on loopback (``python -m fma_service``, SQLite and a weight
directory in a temporary data dir), then sends the same update (100 MB: 25M float32 in 25
tensors; ``--quick``: 20 MB) twice: as a binary upload to ``models/<id>/upload_update/``, and
as the original FMA's JSON (``{"data": [[...floats...], ...]}``) to ``model_updates/``. The binary
upload is the median of five (distinct updates); each is timed from the first byte sent to the
response, the JSON body being encoded beforehand. Five more go through ``fma_client``'s
``Client.push`` (an upload session: hash, parts in parallel, complete), timed from the arrays.
Throughputs count model bytes (MB = 10^6 bytes), so the ratio compares the two protocols for
the same update. The server worker's resident memory is sampled during the binary upload.

Run: ``.venv/bin/python benchmarks/api_ingest.py [--quick] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests

from fma_client import Client

TENSOR_ELEMENTS = 1_000_000
BINARY_REPEATS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PeakRss(threading.Thread):
    """Samples the resident memory of the server's worker processes (found once; the server itself
    when it serves alone, as uvicorn does with one worker) until stopped."""

    def __init__(self, server: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.workers = server.children(recursive=True) or [server]
        self.peak = 0
        self._done = threading.Event()

    def rss(self) -> int:
        return sum(worker.memory_info().rss for worker in self.workers)

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.01)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, self.rss())


def setup_experiment(tensors: int) -> tuple[int, str]:
    """Create a developer and an experiment directly in the service's database (same settings)."""
    import django

    django.setup()
    from django.contrib.auth.models import User

    from fma_django import services

    developer, _ = User.objects.get_or_create(username="bench")
    experiment = services.experiment_create(
        developer=developer,
        name=f"ingest-{tensors}",
        open_enrollment=True,
        tensor_spec=[
            {"name": f"layer{n}", "dtype": "F32", "shape": [TENSOR_ELEMENTS]} for n in range(tensors)
        ],
    )
    return experiment.pk, f"/api/v1/models/{experiment.pk}/"


def make_update(tensors: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer{n}": rng.standard_normal(TENSOR_ELEMENTS, dtype=np.float32) for n in range(tensors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 20 MB update instead of 100 MB")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    tensors = 5 if args.quick else 25

    from fma_core.weights import to_bytes, to_legacy_json

    data_dir = Path(tempfile.mkdtemp(prefix="fma-bench-"))
    port = free_port()
    env = {
        **os.environ,
        "FMA_DATA_DIR": str(data_dir),
        "FMA_SECRET_KEY": "benchmark",
        "FMA_DEVELOPMENT": "1",  # plain http on loopback: no redirect to https
        "FMA_BIND": f"127.0.0.1:{port}",
        "FMA_WORKERS": "1",
        "FMA_THREADS": "2",
        "FMA_MAX_JSON_BYTES": str(4 * 1024**3),
        "FMA_LOG_LEVEL": "WARNING",
        # ingest alone: with the in-process runner each upload would also start a round in the
        # server, whose aggregate (a model's worth of memory) is benchmarks/round.py's business
        "FMA_AGGREGATOR_RUNNER": "none",
        "DJANGO_SETTINGS_MODULE": "fma_service.settings",
    }
    os.environ.update({k: env[k] for k in ("FMA_DATA_DIR", "FMA_SECRET_KEY", "DJANGO_SETTINGS_MODULE")})
    server = subprocess.Popen([sys.executable, "-m", "fma_service"], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                requests.get(url + "/api/v1/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        experiment_id, path = setup_experiment(tensors)
        http = requests.Session()
        credential = http.post(url + path + "register_client/", timeout=30).json()["credential"]
        http.headers["Authorization"] = f"Client {credential}"

        model_bytes = 4 * TENSOR_ELEMENTS * tensors
        # Warm the worker up (imports, first queries) with another update, so the sample sees the upload alone.
        warm = http.post(url + path + "upload_update/", data=to_bytes(make_update(tensors, seed=0)))
        warm.raise_for_status()

        monitor = PeakRss(psutil.Process(server.pid))
        baseline = monitor.rss()
        monitor.start()
        timings = []
        for seed in range(1, 1 + BINARY_REPEATS):  # distinct updates: a repeat would be an idempotent replay
            body = to_bytes(make_update(tensors, seed=seed))  # in memory: no client disk I/O in the timing
            started = time.perf_counter()
            response = http.post(
                url + path + "upload_update/",
                data=body,
                headers={"Content-Type": "application/octet-stream", "X-FMA-Num-Examples": "100"},
                timeout=600,
            )
            timings.append(time.perf_counter() - started)
            assert response.status_code == 201, response.text
        peak = monitor.stop()
        binary_seconds = statistics.median(timings)

        # The same size through an upload session, as fma_client.Client.push sends every update:
        # SHA-256 of the serialization, then the parts in parallel, then complete.
        with Client(url, experiment_id, token=credential, quiet=True) as client:
            session_timings = []
            for seed in range(11, 11 + BINARY_REPEATS):
                update = make_update(tensors, seed=seed)
                started = time.perf_counter()
                client.push(update, num_examples=100)
                session_timings.append(time.perf_counter() - started)
        session_seconds = statistics.median(session_timings)

        legacy = {"federated_model": experiment_id, "data": to_legacy_json(make_update(tensors, seed=99))}
        json_body = json.dumps(legacy).encode()
        del legacy
        started = time.perf_counter()
        response = http.post(
            url + "/api/v1/model_updates/",
            data=json_body,
            headers={"Content-Type": "application/json"},
            timeout=1800,
        )
        json_seconds = time.perf_counter() - started
        assert response.status_code == 201, response.text
    finally:
        server.terminate()
        server.wait(timeout=60)

    binary_mbps = model_bytes / 1e6 / binary_seconds
    json_mbps = model_bytes / 1e6 / json_seconds
    result = {
        "update_bytes": model_bytes,
        "json_body_bytes": len(json_body),
        "binary_seconds": round(binary_seconds, 3),
        "binary_runs_seconds": [round(t, 3) for t in timings],
        "json_seconds": round(json_seconds, 3),
        "binary_mbps": round(binary_mbps, 1),
        "session_seconds": round(session_seconds, 3),
        "session_mbps": round(model_bytes / 1e6 / session_seconds, 1),
        "json_mbps": round(json_mbps, 2),
        "ratio": round(binary_mbps / json_mbps, 1),
        "server_peak_rss_growth_bytes": max(peak - baseline, 0),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>30}: {value}")


if __name__ == "__main__":
    main()
