"""fma_service.settings reads the database credentials and SECRET_KEY from Secrets Manager when
the Lambda deployment names the secrets (FMA_DATABASE_SECRET_ARN, FMA_SECRET_KEY_SECRET_ARN),
in the JSON shape terraform_deploy/modules/secrets writes. Served by moto on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import SecretsManager, child_environment

PRINT_SETTINGS = (
    "import json; from fma_service import settings; "
    "print(json.dumps({'key': settings.SECRET_KEY, 'db': settings.DATABASES['default']}, default=str))"
)


def load_settings(tmp_path: Path, secrets: SecretsManager, **variables: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter, as a cold start does."""
    environment = child_environment(tmp_path, FMA_DATA_DIR=str(tmp_path / "data"), **secrets.environment)
    return subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        env={**environment, **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )


def database_secret(password: str = "p@ss:w/rd#1") -> str:
    """The secret's JSON exactly as modules/secrets writes it (jsonencode of these keys)."""
    return json.dumps(
        {
            "engine": "postgres",
            "username": "fma",
            "password": password,
            "host": "fma.abc123.us-east-1.rds.amazonaws.com",
            "port": 5432,
            "dbname": "fma",
        }
    )


def test_the_database_and_the_secret_key_come_from_secrets_manager(secrets_manager: SecretsManager, tmp_path):
    database = secrets_manager.create("fma-test/settings/database", database_secret())
    key = secrets_manager.create("fma-test/settings/django-secret-key", "s" * 64)
    loaded = load_settings(
        tmp_path, secrets_manager, FMA_DATABASE_SECRET_ARN=database, FMA_SECRET_KEY_SECRET_ARN=key
    )
    assert loaded.returncode == 0, loaded.stderr
    settings = json.loads(loaded.stdout)
    assert settings["key"] == "s" * 64
    assert settings["db"] == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "fma",
        "USER": "fma",
        "PASSWORD": "p@ss:w/rd#1",
        "HOST": "fma.abc123.us-east-1.rds.amazonaws.com",
        "PORT": "5432",
        "CONN_MAX_AGE": 60,
        "OPTIONS": {"sslmode": "require"},
    }


def test_a_database_secret_without_every_key_is_refused_without_showing_its_values(
    secrets_manager: SecretsManager, tmp_path
):
    secret = json.loads(database_secret(password="never-print-me"))
    del secret["host"], secret["dbname"]
    database = secrets_manager.create("fma-test/settings/partial-database", json.dumps(secret))
    loaded = load_settings(
        tmp_path, secrets_manager, FMA_DATABASE_SECRET_ARN=database, FMA_SECRET_KEY="k" * 50
    )
    assert loaded.returncode != 0
    assert f"the database secret {database} lacks host, dbname" in loaded.stderr
    assert "never-print-me" not in loaded.stderr


def test_a_database_secret_that_is_not_json_is_refused(secrets_manager: SecretsManager, tmp_path):
    database = secrets_manager.create("fma-test/settings/plain-database", "fma:never-print-me")
    loaded = load_settings(
        tmp_path, secrets_manager, FMA_DATABASE_SECRET_ARN=database, FMA_SECRET_KEY="k" * 50
    )
    assert loaded.returncode != 0
    assert f"the database secret {database} is not a JSON document" in loaded.stderr
    assert "never-print-me" not in loaded.stderr


def test_without_the_arns_nothing_asks_aws(tmp_path):
    """A laptop or server deployment never needs AWS: the settings must not call it at all."""
    loaded = subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        env=child_environment(
            tmp_path,
            FMA_DATA_DIR=str(tmp_path / "data"),
            FMA_SECRET_KEY="k" * 50,
            AWS_ENDPOINT_URL="http://127.0.0.1:9",  # nothing listens: any AWS call would fail
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["db"]["ENGINE"] == "django.db.backends.sqlite3"
