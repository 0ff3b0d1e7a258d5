"""Developer API tokens from the client's side: an expired token is a ``TokenExpired`` error that says
how to get a new one, and ``Developer`` and ``fma`` list and revoke the developer's tokens."""

from __future__ import annotations

import io
import json
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from fma_client import AuthenticationError, Developer, TokenExpired, ValidationError
from fma_client.cli import main
from fma_django.models import DeveloperToken


def _expire_all() -> None:
    DeveloperToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))


def test_an_expired_token_raises_token_expired_naming_what_to_do(server, developer, dev_token):
    _expire_all()
    with Developer(server, token=dev_token, quiet=True) as dev, pytest.raises(TokenExpired) as raised:
        dev.experiments()
    assert isinstance(raised.value, AuthenticationError)
    assert raised.value.code == "token_expired"
    assert "fma login" in str(raised.value)
    assert "Developer.login" in str(raised.value)


def test_developer_lists_and_revokes_its_tokens(server, developer, dev_token):
    with Developer.login(server, "dev", "dev-password", quiet=True) as second:
        with Developer(server, token=dev_token, quiet=True) as first:
            tokens = first.api_tokens()
            assert len(tokens) == 2
            assert [t["current"] for t in tokens].count(True) == 1
            current = next(t for t in tokens if t["current"])
            other = next(t for t in tokens if not t["current"])
            first.revoke_api_token(other["id"])
            assert [t["id"] for t in first.api_tokens()] == [current["id"]]
        with pytest.raises(AuthenticationError):
            second.experiments()


@pytest.fixture
def fma(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FMA_CONFIG", str(tmp_path / "config" / "fma.json"))
    for name in ("FMA_URL", "FMA_TOKEN", "FMA_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: object) -> tuple[int, str, str]:
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_fma_lists_and_revokes_api_tokens_and_says_when_one_expired(fma, server, developer, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("dev-password\n"))
    assert fma("login", "--url", server, "--username", "dev", "--password-stdin")[0] == 0
    status, out, _ = fma("--json", "api-tokens")
    assert status == 0
    listed = json.loads(out)
    assert len(listed) == 1
    assert listed[0]["current"] is True
    status, out, _ = fma("api-tokens")
    assert "EXPIRES_AT" in out
    _expire_all()
    status, _, err = fma("experiments", "list")
    assert status == 1
    assert "expired" in err
    assert "fma login" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("dev-password\n"))
    assert fma("login", "--url", server, "--username", "dev", "--password-stdin")[0] == 0
    status, out, _ = fma("--json", "api-tokens")
    fresh = [t for t in json.loads(out) if t["current"]]
    stale = [t for t in json.loads(out) if not t["current"]]
    assert len(fresh) == 1
    assert len(stale) == 1
    assert fma("revoke-api-token", stale[0]["id"])[0] == 0
    assert [t["id"] for t in json.loads(fma("--json", "api-tokens")[1])] == [fresh[0]["id"]]


def test_a_locked_out_login_says_to_wait_or_ask_an_administrator(server, developer, settings):
    from fma_client import LockedOut

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        with pytest.raises(ValidationError, match="check the username and password"):
            Developer.login(server, "dev", "wrong password", quiet=True)
    with pytest.raises(LockedOut) as raised:
        Developer.login(server, "dev", "wrong password", quiet=True)
    with pytest.raises(LockedOut) as raised:
        Developer.login(server, "dev", "dev-password", quiet=True)
    assert raised.value.code == "locked_out"
    assert "administrator" in str(raised.value)
