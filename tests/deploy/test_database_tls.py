"""The Lambda deployment's database connection (fma_service.rds, fma_service.aws_secrets) against a
private PostgreSQL that speaks only TLS and takes only passwords (private_postgres.py): the
server's certificate is verified against the CA file the deployment names, as for RDS and its CA
layer; the credentials come from the secret RDS manages (moto's Secrets Manager here), read when a
connection opens, and read again when the server refuses them after a rotation."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import psycopg
import pytest
from django.db.utils import ConnectionHandler, OperationalError

from fma_service import aws_secrets

from .conftest import SecretsManager
from .private_postgres import PrivatePostgres, postgres_bin, private_postgres


@pytest.fixture(scope="module")
def server() -> Iterator[PrivatePostgres]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        message = "PostgreSQL's initdb is missing (/usr/lib/postgresql/*/bin): apt-get install postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with private_postgres(bin_dir) as running:
        yield running


def database_settings(server: PrivatePostgres, arn: str, *, host: str = "localhost", ca_file=None) -> dict:
    """What fma_service.settings builds from the variables Terraform gives the functions."""
    environ = {
        "FMA_DATABASE_HOST": host,
        "FMA_DATABASE_PORT": str(server.port),
        "FMA_DATABASE_NAME": "postgres",
        "FMA_DATABASE_CA_FILE": str(ca_file or server.ca_file),
    }
    return aws_secrets.database_settings(arn, 0, environ)


@pytest.fixture
def connect(django_db_blocker) -> Iterator:
    """Open Django connections with given settings (the test's own, not the test database's);
    all are closed when the test ends."""
    handlers = []

    def open_connection(settings: dict):
        handler = ConnectionHandler({"default": settings})
        handlers.append(handler)
        connection = handler["default"]
        connection.ensure_connection()
        return connection

    with django_db_blocker.unblock():
        yield open_connection
        for handler in handlers:
            handler.close_all()


def create_login(server: PrivatePostgres, user: str, password: str) -> None:
    with psycopg.connect(server.admin_dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")


def set_password(server: PrivatePostgres, user: str, password: str) -> None:
    with psycopg.connect(server.admin_dsn(), autocommit=True) as admin:
        admin.execute(f"ALTER ROLE {user} PASSWORD '{password}'")


def managed_secret(secrets_manager: SecretsManager, name: str, user: str, password: str) -> str:
    """A secret shaped as RDS's managed master-user secret: username and password, nothing else."""
    return secrets_manager.create(name, json.dumps({"username": user, "password": password}))


def test_the_connection_verifies_the_server_against_the_ca_file_and_uses_tls(
    server, secrets_manager, secrets_reads, connect
):
    create_login(server, "fma_tls", "first-password")
    arn = managed_secret(secrets_manager, "fma-test/tls/ok", "fma_tls", "first-password")
    settings = database_settings(server, arn)
    assert settings["OPTIONS"] == {"sslmode": "verify-full", "sslrootcert": str(server.ca_file)}
    connection = connect(settings)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ssl, current_user FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE pid = pg_backend_pid()"
        )
        assert cursor.fetchone() == (True, "fma_tls")
    assert secrets_reads == [arn]


def test_a_server_certified_by_another_authority_gets_no_password(
    server, secrets_manager, secrets_reads, connect
):
    create_login(server, "fma_other_ca", "a-password")
    arn = managed_secret(secrets_manager, "fma-test/tls/other-ca", "fma_other_ca", "a-password")
    with pytest.raises(OperationalError, match="certificate verify failed"):
        connect(database_settings(server, arn, ca_file=server.other_ca_file))


def test_a_certificate_for_another_host_name_is_refused(server, secrets_manager, secrets_reads, connect):
    """The certificate names localhost; reaching the same server as 127.0.0.1 must not pass."""
    create_login(server, "fma_host", "a-password")
    arn = managed_secret(secrets_manager, "fma-test/tls/host", "fma_host", "a-password")
    with pytest.raises(OperationalError, match="does not match host name"):
        connect(database_settings(server, arn, host="127.0.0.1"))


def test_after_a_rotation_the_next_connection_reads_the_secret_again(
    server, secrets_manager, secrets_reads, connect
):
    create_login(server, "fma_rotated", "before-rotation")
    arn = managed_secret(secrets_manager, "fma-test/tls/rotated", "fma_rotated", "before-rotation")
    settings = database_settings(server, arn)
    connect(settings).close()
    connect(settings).close()
    assert secrets_reads == [arn]  # kept: a connection does not cost a Secrets Manager call

    # what a rotation does: the server's password, then the secret's current value
    set_password(server, "fma_rotated", "after-rotation")
    secrets_manager.client.put_secret_value(
        SecretId=arn, SecretString=json.dumps({"username": "fma_rotated", "password": "after-rotation"})
    )
    connection = connect(settings)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == ("fma_rotated",)
    assert secrets_reads == [arn, arn]  # refused once, read again, connected


def test_a_wrong_secret_fails_after_one_more_read(server, secrets_manager, secrets_reads, connect):
    create_login(server, "fma_wrong", "the-real-one")
    arn = managed_secret(secrets_manager, "fma-test/tls/wrong", "fma_wrong", "not-the-real-one")
    with pytest.raises(OperationalError, match="password authentication failed"):
        connect(database_settings(server, arn))
    assert secrets_reads == [arn, arn]
