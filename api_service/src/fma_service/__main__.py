"""``fma-server`` / ``python -m fma_service``: migrate, collect static files, then serve with gunicorn.

Options are environment variables: ``FMA_BIND`` (default ``127.0.0.1:8000``), ``FMA_WORKERS``
(default 2), ``FMA_THREADS`` (default 4), plus those of ``fma_service.settings``.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fma_service.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=1)
    call_command("collectstatic", interactive=False, verbosity=0)
    from gunicorn.app.wsgiapp import run

    bind = os.environ.get("FMA_BIND", "127.0.0.1:8000")
    print(f"FMA dashboard: http://{bind}/dashboard/ (log in with your developer account)", flush=True)
    sys.argv = [
        "gunicorn",
        "fma_service.wsgi:application",
        "--bind",
        bind,
        "--workers",
        os.environ.get("FMA_WORKERS", "2"),
        "--threads",
        os.environ.get("FMA_THREADS", "4"),
        "--timeout",
        os.environ.get("FMA_TIMEOUT", "300"),
        *(argv if argv is not None else sys.argv[1:]),
    ]
    run()


if __name__ == "__main__":
    main()
