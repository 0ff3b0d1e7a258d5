"""The migration story, run: an unchanged fma-connect script (``client.py``) against this service.

    python examples/fma_connect/demo.py [--clients 2] [--rounds 3]

Starts the service on the embedded default (as the quickstart does), creates a legacy-mode
experiment (fma-connect authenticates with a bare CLIENT-UUID) whose rounds close when one update
per client has arrived, runs ``client.py`` once per client with ``--url`` pointing
at the service, and prints what each one printed.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "quickstart"))

from fma_client import Developer  # noqa: E402
from local_service import USERNAME, Service  # noqa: E402

FEATURES, CLASSES = 64, 10


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    data_dir = Path(tempfile.mkdtemp(prefix="fma-connect-demo-"))
    service = Service(data_dir)
    try:
        service.start()
        password = secrets.token_urlsafe(12)
        service.create_developer(password)
        with Developer.login(service.url, USERNAME, password, quiet=True) as developer:
            experiment = developer.create_experiment(
                {
                    "name": "fma-connect-digits",
                    "aggregator": "fedavg",
                    # one update per client, counted rather than "all_clients": the scripts start
                    # together, and a client that registers after another's first update must
                    # still be in round 1; the deadline keeps a crashed client from stalling it
                    "round_policy": {
                        "any_of": [
                            {"policy": "require_x_updates", "x": args.clients},
                            {"policy": "deadline", "seconds": 120, "min_updates": 1},
                        ]
                    },
                    # the original's JSON layers: W (64 × 10) and b (10), zeros to start from
                    "initial_model": [[[0.0] * CLASSES] * FEATURES, [0.0] * CLASSES],
                    "enrollment": "legacy",
                }
            )
            print(f"service {service.url}, legacy-mode experiment {experiment['id']}", flush=True)
            script = [sys.executable, str(HERE / "client.py"), "--url", service.url]
            options = ["--model-id", str(experiment["id"]), "--rounds", str(args.rounds)]
            processes = [
                subprocess.Popen(
                    [*script, *options, "--client-index", str(index), "--num-clients", str(args.clients)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for index in range(args.clients)
            ]
            outputs = [process.communicate(timeout=600)[0] for process in processes]
            for index, output in enumerate(outputs):
                print(f"--- client {index} (exit {processes[index].returncode})")
                print(output.rstrip(), flush=True)
            aggregates = developer.aggregates(experiment["id"])
            print(f"{len(aggregates)} rounds aggregated by the service")
        return {
            "returncodes": [p.returncode for p in processes],
            "outputs": outputs,
            "aggregates": aggregates,
        }
    finally:
        service.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
