"""Logins: the token endpoint, the dashboard and the admin lock an account out after repeated wrong
passwords (even the right one is refused until the lockout ends or an administrator unlocks it),
anonymous endpoints are throttled through the shared cache, and passwords must pass Django's rules."""

from __future__ import annotations

import io
import re
from unittest import mock

import pytest
from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client as Browser
from rest_framework.test import APIClient

from fma_django.models import Experiment

GOOD_PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice", password=GOOD_PASSWORD, is_staff=True, is_superuser=True)


def _token_login(password: str, username: str = "alice") -> object:
    return APIClient().post("/api-token-auth/", {"username": username, "password": password}, format="json")


def test_wrong_passwords_lock_the_token_endpoint_until_an_administrator_unlocks(alice):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _token_login("wrong password").status_code == 400
    assert _token_login("wrong password").json()["code"] == "locked_out"  # the last one allowed
    refused = _token_login(GOOD_PASSWORD)
    assert refused.status_code == 403
    assert refused.json()["code"] == "locked_out"
    assert "token" not in refused.json()
    assert "axes_reset_username" in refused.json()["detail"]
    call_command("axes_reset_username", "alice", stdout=io.StringIO())
    assert _token_login(GOOD_PASSWORD).status_code == 200


def test_the_lockout_ends_after_its_cool_off(alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _token_login("wrong password")
    assert _token_login(GOOD_PASSWORD).status_code == 403
    from axes.models import AccessAttempt

    AccessAttempt.objects.update(
        attempt_time=AccessAttempt.objects.first().attempt_time - settings.AXES_COOLOFF_TIME * 2
    )
    assert _token_login(GOOD_PASSWORD).status_code == 200


@pytest.mark.parametrize("path", ["/dashboard/login/", "/admin/login/"])
def test_wrong_passwords_lock_the_dashboard_and_admin_logins(alice, path):
    browser = Browser()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert browser.post(path, {"username": "alice", "password": "wrong password"}).status_code == 200
    assert browser.post(path, {"username": "alice", "password": "wrong password"}).status_code == 403
    refused = browser.post(path, {"username": "alice", "password": GOOD_PASSWORD})
    assert refused.status_code == 403
    assert "_auth_user_id" not in browser.session
    assert browser.get("/dashboard/").status_code == 302  # still sent to the login page


def test_the_token_endpoint_is_throttled_per_address(db, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "login": "3/hour"},
    }
    cache.clear()
    # different usernames, so the lockout (per username and address) is not what answers
    for number in range(3):
        assert _token_login("x", username=f"nobody{number}").status_code == 400
    throttled = _token_login("x", username="nobody-else")
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "throttled"
    assert int(throttled["Retry-After"]) > 0


def test_anonymous_enrollment_is_throttled_per_address(db, settings, alice):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "register": "2/hour"},
    }
    cache.clear()
    experiment = Experiment.objects.create(developer=alice, name="open", open_enrollment=True)
    url = f"/api/v1/models/{experiment.pk}/register_client/"
    assert [APIClient().post(url, {}, format="json").status_code for _ in range(3)] == [200, 200, 429]


def test_the_cache_is_the_database_cache_whose_table_the_migrations_create(db):
    assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.db.DatabaseCache"
    cache.set("fma-test", "shared", 60)
    assert cache.get("fma-test") == "shared"


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short1!", "too short"),
        ("password123", "too common"),
        ("8365920174", "entirely numeric"),
        ("alice123", "too similar"),
    ],
)
def test_weak_passwords_are_refused(alice, password, why):
    with pytest.raises(ValidationError, match=why):
        password_validation.validate_password(password, alice)
    password_validation.validate_password(GOOD_PASSWORD, alice)


def test_createsuperuser_refuses_a_weak_password(db):
    prompts = iter(["password123", "password123", "n", GOOD_PASSWORD, GOOD_PASSWORD])
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch("getpass.getpass", side_effect=lambda *_: next(prompts)),
        mock.patch("builtins.input", side_effect=lambda *_: next(prompts)),
    ):
        call_command(
            "createsuperuser",
            username="carol",
            email="c@example.com",
            stdout=out,
            stderr=err,
            stdin=mock.MagicMock(isatty=lambda: True),
        )
    assert re.search("too common", err.getvalue())
    assert User.objects.get(username="carol").check_password(GOOD_PASSWORD)


def test_createsuperuser_without_input_refuses_a_weak_password_from_the_environment(db, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "password123")
    with pytest.raises(CommandError, match="too common"):
        call_command(
            "createsuperuser", "--noinput", username="dave", email="d@example.com", stdout=io.StringIO()
        )
    assert not User.objects.filter(username="dave").exists()


def test_a_successful_token_login_clears_the_failures_and_counts_as_a_login(alice):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _token_login("wrong password").status_code == 400
    assert _token_login(GOOD_PASSWORD).status_code == 200
    alice.refresh_from_db()
    assert alice.last_login is not None
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _token_login("wrong password").status_code == 400
    assert _token_login(GOOD_PASSWORD).status_code == 200


def test_other_anonymous_endpoints_are_throttled_per_address_and_developers_are_not(alice, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "anon": "2/hour"},
    }
    cache.clear()
    anonymous = APIClient()
    assert [anonymous.get("/api/schema/").status_code for _ in range(3)] == [200, 200, 429]
    developer = APIClient()
    developer.force_authenticate(alice)
    assert [developer.get("/api/schema/").status_code for _ in range(3)] == [200, 200, 200]
