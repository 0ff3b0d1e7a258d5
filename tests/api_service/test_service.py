"""The deployable project: settings from the environment, manage.py, and `fma-server` serving the API,
the Swagger UI (offline) and the admin from one command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

MANAGE = Path(__file__).resolve().parents[2] / "api_service" / "manage.py"


def settings_value(env: dict[str, str], expression: str) -> subprocess.CompletedProcess:
    code = f"import django; django.setup(); from django.conf import settings; print({expression})"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_secret_key_is_required_outside_development(tmp_path, clean_env):
    refused = settings_value(clean_env(tmp_path), "settings.SECRET_KEY")
    assert refused.returncode != 0
    assert "FMA_SECRET_KEY is not set" in refused.stderr
    given = settings_value(
        clean_env(tmp_path, FMA_SECRET_KEY="s3cret"), "settings.SECRET_KEY, settings.DEBUG"
    )
    assert given.stdout.strip() == "s3cret False"


def test_embedded_defaults_live_under_the_data_dir(tmp_path, clean_env):
    result = settings_value(
        clean_env(tmp_path, FMA_DEVELOPMENT="1"),
        "settings.DATABASES['default']['NAME'], settings.FMA_WEIGHTS_DIR, settings.DEBUG",
    )
    assert result.stdout.split() == [str(tmp_path / "fma.sqlite3"), str(tmp_path / "weights"), "False"]


def test_database_url_selects_postgresql(tmp_path, clean_env):
    result = settings_value(
        clean_env(
            tmp_path, FMA_DEVELOPMENT="1", FMA_DATABASE_URL="postgresql://fma:p%40ss@db.local:6543/fmadb"
        ),
        "sorted((k, v) for k, v in settings.DATABASES['default'].items() if k in {'ENGINE','NAME','USER','PASSWORD','HOST','PORT'})",
    )
    assert result.stdout.strip() == str(
        [
            ("ENGINE", "django.db.backends.postgresql"),
            ("HOST", "db.local"),
            ("NAME", "fmadb"),
            ("PASSWORD", "p@ss"),
            ("PORT", "6543"),
            ("USER", "fma"),
        ]
    )


def test_manage_py_migrates_and_creates_a_superuser(tmp_path, clean_env):
    env = clean_env(tmp_path, FMA_DEVELOPMENT="1", DJANGO_SUPERUSER_PASSWORD="pw-for-tests")
    for command in (
        ["migrate", "--noinput"],
        ["createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com"],
    ):
        done = subprocess.run(
            [sys.executable, str(MANAGE), *command], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "fma.sqlite3").exists()


PROXY = {"X-Forwarded-Proto": "https"}  # production settings: requests come through the TLS proxy


def get(url: str) -> requests.Response:
    return requests.get(url, headers=PROXY, timeout=60)


@pytest.fixture(scope="module")
def server(serve_for_module):
    """One server for the module: its tests only read pages, files and refusals."""
    return serve_for_module(headers=PROXY, FMA_SECRET_KEY="test-key", FMA_WORKERS="1").url


def test_one_command_serves_api_docs_and_admin(server):
    schema = get(server + "/api/schema/")
    assert schema.status_code == 200
    assert "/api/v1/models/{id}/upload_update/" in schema.text
    docs = get(server + "/api/docs/")
    assert docs.status_code == 200
    assets = [
        line.split('"')[1]
        for line in docs.text.splitlines()
        if "swagger-ui-bundle.js" in line and '"' in line
    ]
    assert assets
    assert assets[0].startswith("/static/")  # served by the service itself: no internet needed
    assert get(server + assets[0]).status_code == 200
    start_up = get(server + "/api/docs/?script=")  # the page's script, not inline (CSP)
    assert start_up.status_code == 200
    assert start_up.headers["Content-Type"].startswith("application/javascript")
    assert get(server + "/admin/login/").status_code == 200
    assert get(server + "/api/v1/models/").status_code == 401


def test_the_dashboard_and_its_static_files_are_served_by_the_service_itself(server):
    login = get(server + "/")
    assert login.status_code == 200
    assert login.url == server + "/dashboard/login/?next=/dashboard/"
    assert "https://" not in login.text  # nothing from a CDN
    for asset in (
        "/static/dashboard/dashboard.css",
        "/static/dashboard/live.js",
        "/static/dashboard/charts.js",
        # the chart library, installed from the npm registry by `make` (api_service/package.json)
        "/static/dashboard/vendor/uPlot.iife.min.js",
        "/static/dashboard/vendor/uPlot.min.css",
    ):
        assert get(server + asset).status_code == 200
