"""Every dashboard page sends a Content-Security-Policy that allows no inline script or style and no
eval (issue 13 item 6): the charts and the live updates run from the dashboard's own static files."""

from __future__ import annotations

import pytest
from django.test import Client as Browser


@pytest.fixture
def alice_browser(alice) -> Browser:
    browser = Browser()
    browser.force_login(alice)
    return browser


def test_every_dashboard_page_sends_a_strict_csp(alice, alice_browser, make_experiment):
    experiment = make_experiment(alice, "mnist")
    pages = {
        "/dashboard/login/": Browser(),
        "/dashboard/": alice_browser,
        f"/dashboard/experiments/{experiment.pk}/": alice_browser,
        f"/dashboard/experiments/{experiment.pk}/live.json": alice_browser,
        f"/dashboard/compare/?experiment={experiment.pk}": alice_browser,
    }
    for url, browser in pages.items():
        answer = browser.get(url)
        assert answer.status_code == 200, url
        policy = answer.headers["Content-Security-Policy"]
        directives = {d.split()[0]: d.split()[1:] for d in policy.split(";") if d.strip()}
        assert directives["default-src"] == ["'self'"], url
        assert "'unsafe-inline'" not in policy, url
        assert "'unsafe-eval'" not in policy, url
        assert directives["frame-ancestors"] == ["'none'"], url
        assert directives["object-src"] == ["'none'"], url
