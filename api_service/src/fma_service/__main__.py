"""``fma-server`` / ``python -m fma_service``: migrate, collect static files, then serve with uvicorn.

Options are environment variables: ``FMA_BIND`` (default ``127.0.0.1:8000``), ``FMA_WORKERS``
(processes, default 2), ``FMA_THREADS`` (threads running requests in each, default 8),
``FMA_READ_TIMEOUT`` (seconds, default 60), plus those of ``fma_service.settings``. Why uvicorn
in front of the WSGI application, and what each limit does: ``fma_service.asgi``.

Metrics (``FMA_METRICS=prometheus``, the default) run in Prometheus's multiprocess mode, so a scrape
of any worker process sums them all: each process writes its own files under
``PROMETHEUS_MULTIPROC_DIR``, by default ``FMA_DATA_DIR/metrics``, emptied at start (an earlier
run's files would be summed in; a directory the operator chose is the operator's to empty). With
``FMA_METRICS_ADDRESS`` this process also serves them on that address.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fma_service.settings")
    import django
    from django.conf import settings
    from django.core.management import call_command

    if settings.FMA_METRICS == "prometheus" and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_emptied(settings.DATA_DIR / "metrics"))
    django.setup()  # after the line above: prometheus_client reads it when first imported
    call_command("migrate", interactive=False, verbosity=1)
    call_command("collectstatic", interactive=False, verbosity=0)
    if settings.FMA_METRICS == "prometheus" and settings.FMA_METRICS_ADDRESS:
        from fma_service.observability.exporter import serve

        serve(settings.FMA_METRICS_ADDRESS, waiting=True)
    import uvicorn

    bind = os.environ.get("FMA_BIND", "127.0.0.1:8000")
    host, _, port = bind.rpartition(":")
    print(f"FMA dashboard: http://{bind}/dashboard/ (log in with your developer account)", flush=True)
    uvicorn.run(
        "fma_service.asgi:application",
        host=host.strip("[]"),
        port=int(port),
        workers=int(os.environ.get("FMA_WORKERS", "2")),
        http="h11",  # bounds the headers a client may send (16 KiB); httptools does not
        interface="asgi3",
        lifespan="off",
        access_log=False,
        log_level=os.environ.get("FMA_LOG_LEVEL", "INFO").lower(),
        timeout_keep_alive=5,
        timeout_graceful_shutdown=30,
    )


def _emptied(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


if __name__ == "__main__":
    main()
