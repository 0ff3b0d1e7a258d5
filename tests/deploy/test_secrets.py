"""fma_service.settings reads SECRET_KEY from Secrets Manager and builds the database connection
from the environment when the Lambda deployment names the secrets (FMA_SECRET_KEY_SECRET_ARN,
FMA_DATABASE_SECRET_ARN); the database credentials, in the shape of RDS's managed secret, are read
by fma_service.aws_secrets when a connection opens (test_database_tls.py connects). Served by
moto on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from fma_service import aws_secrets

from .conftest import SecretsManager, child_environment

PRINT_SETTINGS = (
    "import json; from fma_service import settings; "
    "print(json.dumps({'key': settings.SECRET_KEY, 'db': settings.DATABASES['default']}, default=str))"
)


def load_settings(tmp_path: Path, secrets: SecretsManager, **variables: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter, as a cold start does, from the code under test
    (PYTHONPATH, when the suite runs from a source tree other than the installed one)."""
    environment = child_environment(tmp_path, FMA_DATA_DIR=str(tmp_path / "data"), **secrets.environment)
    if "PYTHONPATH" in os.environ:
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        env={**environment, **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )


def database_secret(password: str = "p@ss:w/rd#1") -> str:
    """The secret's JSON as RDS keeps a managed master user's: username and password only."""
    return json.dumps({"username": "fma", "password": password})


# what terraform_deploy gives both functions besides the secret's ARN (main.tf, common_environment)
CONNECTION = {
    "FMA_DATABASE_HOST": "fma.abc123.us-east-1.rds.amazonaws.com",
    "FMA_DATABASE_PORT": "5432",
    "FMA_DATABASE_NAME": "fma",
    "FMA_DATABASE_CA_FILE": "/opt/rds-ca/us-east-1-bundle.pem",
}


def test_the_database_comes_from_the_environment_and_the_secret_key_from_secrets_manager(
    secrets_manager: SecretsManager, tmp_path
):
    """The database's password is read when a connection opens (fma_service.rds), never at import:
    a settings import with an ARN that names no secret at all still succeeds."""
    database = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-0000-AbCdEf"
    key = secrets_manager.create("fma-test/settings/django-secret-key", "s" * 64)
    loaded = load_settings(
        tmp_path,
        secrets_manager,
        FMA_DATABASE_SECRET_ARN=database,
        FMA_SECRET_KEY_SECRET_ARN=key,
        **CONNECTION,
    )
    assert loaded.returncode == 0, loaded.stderr
    settings = json.loads(loaded.stdout)
    assert settings["key"] == "s" * 64
    assert settings["db"] == {
        "ENGINE": "fma_service.rds",
        "SECRET_ARN": database,
        "NAME": "fma",
        "HOST": "fma.abc123.us-east-1.rds.amazonaws.com",
        "PORT": "5432",
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"sslmode": "verify-full", "sslrootcert": "/opt/rds-ca/us-east-1-bundle.pem"},
    }


def test_a_database_secret_arn_without_the_connection_variables_is_refused(
    secrets_manager: SecretsManager, tmp_path
):
    loaded = load_settings(
        tmp_path,
        secrets_manager,
        FMA_DATABASE_SECRET_ARN="arn:aws:secretsmanager:us-east-1:123456789012:secret:db",
        FMA_SECRET_KEY="k" * 50,
        FMA_DATABASE_HOST="fma.abc123.us-east-1.rds.amazonaws.com",
    )
    assert loaded.returncode != 0
    assert "FMA_DATABASE_PORT, FMA_DATABASE_NAME, FMA_DATABASE_CA_FILE must be too" in loaded.stderr


def test_the_credentials_are_read_once_and_again_on_request(secrets_manager: SecretsManager, secrets_reads):
    arn = secrets_manager.create("fma-test/settings/credentials", database_secret())
    assert aws_secrets.database_credentials(arn) == ("fma", "p@ss:w/rd#1")
    assert aws_secrets.database_credentials(arn) == ("fma", "p@ss:w/rd#1")
    assert secrets_reads == [arn]
    secrets_manager.client.put_secret_value(SecretId=arn, SecretString=database_secret("rotated"))
    assert aws_secrets.database_credentials(arn, refresh=True) == ("fma", "rotated")
    assert secrets_reads == [arn, arn]


def test_a_database_secret_without_a_password_is_refused_without_showing_its_values(
    secrets_manager: SecretsManager, secrets_reads
):
    arn = secrets_manager.create("fma-test/settings/partial", json.dumps({"user": "never-print-me"}))
    with pytest.raises(ImproperlyConfigured) as refused:
        aws_secrets.database_credentials(arn)
    assert str(refused.value) == f"the database secret {arn} lacks username, password"


def test_a_database_secret_that_is_not_json_is_refused(secrets_manager: SecretsManager, secrets_reads):
    arn = secrets_manager.create("fma-test/settings/plain", "fma:never-print-me")
    with pytest.raises(ImproperlyConfigured) as refused:
        aws_secrets.database_credentials(arn)
    assert str(refused.value) == f"the database secret {arn} is not a JSON document"


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
