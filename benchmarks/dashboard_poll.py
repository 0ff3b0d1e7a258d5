"""The dashboard's poll when one new round arrives, at 100 rounds × 100 clients: bytes and server time.

An experiment's records are written straight to a fresh SQLite database (``--rounds`` rounds of
``--clients`` clients, each update with two metrics, each aggregate scored by every client, one
rejected update per round; no weights: the page shows only records), then the detail page is
loaded once, its cursors kept, one more round is recorded, and the poll the page then makes is
timed (median of ``--repeats``, each with the same cursors, so each answers the same; wall time,
and CPU time, which other jobs on a shared machine do not inflate). Beside it,
in the same run, the baseline: the same poll without cursors, which is what every poll sent before
the regions had cursors (every region re-rendered whenever anything changed).

Run: ``.venv/bin/python benchmarks/dashboard_poll.py [--rounds 100] [--clients 100] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from urllib.parse import urlencode

os.environ.setdefault("FMA_DEVELOPMENT", "1")
os.environ.setdefault("FMA_DATA_DIR", tempfile.mkdtemp(prefix="fma-bench-dashboard-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fma_service.settings")

import django

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client as Browser  # noqa: E402

from fma_django.models import (  # noqa: E402
    Client,
    Enrollment,
    Evaluation,
    Event,
    EventKind,
    Experiment,
    ModelAggregate,
    ModelUpdate,
    UpdateStatus,
)

HASH = "ab" * 32


def record_round(
    experiment: Experiment, clients: list[Client], number: int, parent: ModelAggregate | None
) -> ModelAggregate:
    """What the round engine records for one round, written in bulk (the page reads only records)."""
    aggregate = ModelAggregate.objects.create(
        experiment=experiment,
        parent=parent,
        round_number=number,
        weights_key=f"aggregates/{experiment.pk}/r{number}.safetensors",
        content_id=HASH,
        size_bytes=1_000_000,
        aggregator="fedavg",
        aggregator_params={"weighted": True},
        duration_seconds=0.5 + number / 1000,
        peak_memory_bytes=50_000_000,
    )
    ModelUpdate.objects.bulk_create(
        ModelUpdate(
            experiment=experiment,
            client=client,
            status=UpdateStatus.CONSUMED,
            base_aggregate=parent,
            base_round=number - 1,
            aggregate=aggregate,
            aggregate_weight=1 / len(clients),
            num_examples=100 + i,
            metrics={"loss": 1 / (number + i), "accuracy": 1 - 1 / (number + i + 1)},
            weights_key=f"updates/{experiment.pk}/{number}-{i}.safetensors",
            content_id=f"{number:08x}{i:056x}",
            size_bytes=1_000_000,
        )
        for i, client in enumerate(clients)
    )
    Evaluation.objects.bulk_create(
        Evaluation(aggregate=aggregate, client=client, metrics={"accuracy": 0.9}, num_examples=50)
        for client in clients
    )
    Event.objects.create(
        kind=EventKind.UPDATE_REJECTED,
        experiment=experiment,
        client=clients[0],
        detail={"reason": "not finite"},
    )
    return aggregate


def measure(browser: Browser, url: str, repeats: int) -> tuple[int, float, float, dict]:
    """Bytes, median wall time and median CPU time of the request (served in this process, so the
    CPU time is the server's work, whatever else the machine runs)."""
    walls, cpus, answer = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        answer = browser.get(url)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
        assert answer.status_code == 200, answer.status_code
    return len(answer.content), statistics.median(walls), statistics.median(cpus), answer.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    developer = User.objects.create_user("bench", password="unused")
    experiment = Experiment.objects.create(name="bench", developer=developer)
    clients = Client.objects.bulk_create(Client(secret_hash="") for _ in range(args.clients))
    Enrollment.objects.bulk_create(Enrollment(experiment=experiment, client=c) for c in clients)
    parent = None
    for number in range(1, args.rounds + 1):
        parent = record_round(experiment, clients, number, parent)

    browser = Browser(SERVER_NAME="127.0.0.1")
    browser.force_login(developer)
    start = time.perf_counter()
    page = browser.get(f"/dashboard/experiments/{experiment.pk}/")
    page_seconds = time.perf_counter() - start
    cursors = dict(re.findall(r'data-live="(\w+)" data-cursor="([^"]*)"', page.content.decode()))
    record_round(experiment, clients, args.rounds + 1, parent)

    live = f"/dashboard/experiments/{experiment.pk}/live.json"
    poll_bytes, poll_seconds, poll_cpu, poll = measure(browser, f"{live}?{urlencode(cursors)}", args.repeats)
    full_bytes, full_seconds, full_cpu, _ = measure(browser, live, args.repeats)
    result = {
        "rounds": args.rounds,
        "clients": args.clients,
        "page_bytes": len(page.content),
        "page_seconds": round(page_seconds, 3),
        "poll_regions": sorted(poll["regions"]),
        "poll_bytes": poll_bytes,
        "poll_ms": round(poll_seconds * 1000, 1),
        "poll_cpu_ms": round(poll_cpu * 1000, 1),
        "baseline_bytes": full_bytes,
        "baseline_ms": round(full_seconds * 1000, 1),
        "baseline_cpu_ms": round(full_cpu * 1000, 1),
        "bytes_ratio": round(full_bytes / poll_bytes, 1),
        "cpu_ratio": round(full_cpu / poll_cpu, 1),
        "load_average": round(os.getloadavg()[0], 1),
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(
        f"{args.rounds} rounds × {args.clients} clients, one new round arrived "
        f"(SQLite, Django {django.get_version()}, load average {result['load_average']})"
    )
    print("                         bytes       wall time    CPU time (medians)")
    print(
        f"  poll with cursors: {poll_bytes / 1000:8.1f} KB {poll_seconds * 1000:9.1f} ms {poll_cpu * 1000:9.1f} ms"
        f"   regions {', '.join(result['poll_regions'])}"
    )
    print(
        f"  every region:      {full_bytes / 1000:8.1f} KB {full_seconds * 1000:9.1f} ms {full_cpu * 1000:9.1f} ms"
    )
    print(f"  ratio: {result['bytes_ratio']}× fewer bytes, {result['cpu_ratio']}× less CPU")
    print(f"  the whole page once: {len(page.content) / 1000:.1f} KB in {page_seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()
