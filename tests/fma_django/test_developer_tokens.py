"""Developer API tokens: only their SHA-256 is stored, they expire after FMA_TOKEN_TTL_DAYS (401 with
code ``token_expired``), a developer lists and revokes her own, and tokens issued before hashing are
hashed by the migration and keep working until they expire."""

from __future__ import annotations

import hashlib
import importlib
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from fma_django.models import DeveloperToken

PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice", password=PASSWORD)


def _login(username: str = "alice", **extra: str) -> dict:
    answer = APIClient().post(
        "/api-token-auth/", {"username": username, "password": PASSWORD, **extra}, format="json"
    )
    assert answer.status_code == 200, answer.content
    return answer.json()


def _as(token: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return api


def _every_stored_text() -> str:
    """Every column of every row of every table, as text: where a plain token would show up."""
    with connection.cursor() as cursor:
        texts = []
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            texts.extend(str(value) for row in cursor.fetchall() for value in row)
    return "\n".join(texts)


def test_the_v1_login_answers_a_token_that_works_and_is_stored_only_as_its_hash(alice):
    token = _login()["token"]
    assert _as(token).get("/api/v1/models/").status_code == 200
    row = DeveloperToken.objects.get(user=alice)
    assert row.digest == hashlib.sha256(token.encode()).hexdigest()
    assert token not in _every_stored_text()


def test_a_token_expires_after_the_ttl_with_a_distinguishable_401(alice, settings):
    settings.FMA_TOKEN_TTL = timedelta(days=2)
    answer = _login()
    row = DeveloperToken.objects.get(user=alice)
    assert timedelta(days=2) - timedelta(minutes=1) < row.expires_at - timezone.now() <= timedelta(days=2)
    assert answer["expires_at"]
    DeveloperToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = _as(answer["token"]).get("/api/v1/models/")
    assert expired.status_code == 401
    assert expired.json()["code"] == "token_expired"
    assert "fma login" in expired.json()["detail"]
    wrong = _as("not-a-token").get("/api/v1/models/")
    assert (wrong.status_code, wrong.json()["code"]) == (401, "authentication_failed")


def test_a_developer_lists_and_revokes_her_own_tokens_only(alice):
    bob = User.objects.create_user("bob", password=PASSWORD)
    first = _login(name="laptop")
    second = _login(name="ci")
    bobs = _login("bob")
    api = _as(first["token"])
    listed = api.get("/api/v1/tokens/").json()["results"]
    assert sorted(t["name"] for t in listed) == ["ci", "laptop"]
    assert {t["current"] for t in listed if t["name"] == "laptop"} == {True}
    assert not any(first["token"] in str(t) or second["token"] in str(t) for t in listed)
    bobs_id = DeveloperToken.objects.get(user=bob).pk
    assert api.delete(f"/api/v1/tokens/{bobs_id}/").status_code == 404
    assert _as(bobs["token"]).get("/api/v1/models/").status_code == 200
    assert api.delete(f"/api/v1/tokens/{second['id']}/").status_code == 204
    assert _as(second["token"]).get("/api/v1/models/").status_code == 401
    assert api.get("/api/v1/models/").status_code == 200
    made = api.post("/api/v1/tokens/", {"name": "notebook"}, format="json")
    assert made.status_code == 201
    assert _as(made.json()["token"]).get("/api/v1/models/").status_code == 200


def test_the_token_endpoints_are_in_the_openapi_schema(alice):
    schema = _as(_login()["token"]).get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert {"get", "post"} <= set(schema["paths"]["/api/v1/tokens/"])
    assert "delete" in schema["paths"]["/api/v1/tokens/{id}/"]
    assert "post" in schema["paths"]["/api-token-auth/"]


def test_the_migration_hashes_a_plain_token_which_keeps_working_until_it_expires(alice, settings):
    legacy = "0123456789abcdef0123456789abcdef01234567"
    with connection.cursor() as cursor:
        if "authtoken_token" not in connection.introspection.table_names():
            cursor.execute(
                "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created timestamp, user_id integer)"
            )
        cursor.execute(
            "INSERT INTO authtoken_token (key, created, user_id) VALUES (%s, %s, %s)",
            [legacy, timezone.now(), alice.pk],
        )
    migration = importlib.import_module("fma_django.migrations.0007_developer_tokens")
    migration.hash_legacy_tokens(apps, SimpleNamespace(connection=connection))
    assert legacy not in _every_stored_text()
    row = DeveloperToken.objects.get(user=alice)
    assert row.expires_at - timezone.now() > settings.FMA_TOKEN_TTL - timedelta(minutes=1)
    assert _as(legacy).get("/api/v1/models/").status_code == 200
    DeveloperToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert _as(legacy).get("/api/v1/models/").json()["code"] == "token_expired"


def test_a_token_is_hex_so_that_no_command_line_reads_it_as_an_option(alice):
    """A URL-safe token may start with "-", and `fma login --token -x…` then fails to parse."""
    tokens = [_login()["token"] for _ in range(20)]
    assert all(re.fullmatch("[0-9a-f]{64}", token) for token in tokens)
