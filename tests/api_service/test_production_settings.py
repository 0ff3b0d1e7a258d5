"""Production settings (FMA_DEVELOPMENT unset) behind a TLS-terminating proxy (issue 13 item 6).

`manage.py check --deploy` is clean by default; plain http is redirected to https except the
probes (/healthz, /readyz); behind the proxy (its X-Forwarded-Proto) the answers carry HSTS and
secure cookies; every HTML page carries a Content-Security-Policy without 'unsafe-inline' or 'unsafe-eval'.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests

MANAGE = Path(__file__).resolve().parents[2] / "api_service" / "manage.py"
PROXY = {"X-Forwarded-Proto": "https"}  # what the TLS-terminating proxy (or API Gateway) adds


def production_env(clean_env, data_dir: Path, **extra: str) -> dict[str, str]:
    return clean_env(data_dir, FMA_SECRET_KEY=secrets.token_urlsafe(50), **extra)


def test_check_deploy_is_clean_by_default(tmp_path, clean_env):
    done = subprocess.run(
        [sys.executable, str(MANAGE), "check", "--deploy", "--fail-level", "WARNING"],
        env=production_env(clean_env, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


@pytest.fixture(scope="module")
def production(serve_for_module) -> str:
    """One server for the module: its tests only read pages and headers."""
    return serve_for_module(
        headers=PROXY, FMA_SECRET_KEY=secrets.token_urlsafe(50), FMA_WORKERS="1", FMA_AGGREGATOR_RUNNER="none"
    ).url


def test_plain_http_is_redirected_to_https_but_not_the_probes(production):
    health = requests.get(production + "/healthz", timeout=60, allow_redirects=False)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = requests.get(production + "/readyz", timeout=60, allow_redirects=False)
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    metrics = requests.get(production + "/metrics", timeout=60, allow_redirects=False)
    assert metrics.status_code == 301  # a bearer token travels over https only
    api = requests.get(production + "/api/v1/", timeout=60, allow_redirects=False)
    assert api.status_code == 301
    assert api.headers["Location"] == production.replace("http://", "https://") + "/api/v1/"


def test_behind_the_proxy_answers_carry_hsts_and_secure_cookies(production):
    api = requests.get(production + "/api/v1/", headers=PROXY, timeout=60, allow_redirects=False)
    assert api.status_code == 401  # served, not redirected: the proxy said the client used https
    assert "max-age=" in api.headers["Strict-Transport-Security"]
    login = requests.get(production + "/dashboard/login/", headers=PROXY, timeout=60)
    assert login.status_code == 200
    cookie = login.headers["Set-Cookie"]
    assert "csrftoken=" in cookie
    assert "Secure" in cookie


def csp_directives(header: str) -> dict[str, list[str]]:
    return {parts[0]: parts[1:] for parts in (d.split() for d in header.split(";") if d.strip()) if parts}


@pytest.mark.parametrize("path", ["/dashboard/login/", "/api/docs/", "/admin/login/"])
def test_html_pages_send_a_csp_without_unsafe_inline_or_eval(production, path):
    page = requests.get(production + path, headers=PROXY, timeout=60)
    assert page.status_code == 200
    header = page.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in header
    assert "unsafe-eval" not in header
    directives = csp_directives(header)
    assert directives["default-src"] == ["'self'"]
    assert "*" not in directives.get("script-src", []) + directives.get("style-src", [])
    # every inline script the page has carries the response's nonce, or it would not run
    nonces = re.findall(r"'nonce-([^']+)'", header)
    for script in re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page.text):
        assert nonces, script
        assert f'nonce="{nonces[0]}"' in script, script
