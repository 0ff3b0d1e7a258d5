"""Settings values kept in AWS Secrets Manager, for the Lambda deployment (``terraform_deploy/``).

There the functions receive the ARNs of two secrets instead of the values:

- ``FMA_DATABASE_SECRET_ARN``: the database's master user, in the secret RDS manages and rotates
  itself (JSON: ``username``, ``password``; nothing else). Host, port and database name come from
  ``FMA_DATABASE_HOST``, ``FMA_DATABASE_PORT`` and ``FMA_DATABASE_NAME``, and the server's
  certificate is verified against ``FMA_DATABASE_CA_FILE`` (the RDS CAs, a layer Terraform
  fetches). The credentials are read when a connection is opened, not when the settings are
  imported, and read again when the database refuses them: RDS rotates the password every 7 days
  while execution environments live on (``fma_service.rds``).
- ``FMA_SECRET_KEY_SECRET_ARN``: the plain Django ``SECRET_KEY``, read once when the settings are
  imported.

boto3 finds the region and the credentials the usual way (the function's role on Lambda); its
``AWS_ENDPOINT_URL_SECRETS_MANAGER`` variable points the tests at a local Secrets Manager.
Error messages name the secret, the variable and the missing keys, never a value.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

from django.core.exceptions import ImproperlyConfigured

CREDENTIAL_KEYS = ("username", "password")
CONNECTION_VARIABLES = ("FMA_DATABASE_HOST", "FMA_DATABASE_PORT", "FMA_DATABASE_NAME", "FMA_DATABASE_CA_FILE")


class Credentials(NamedTuple):
    user: str
    password: str


_credentials: dict[str, Credentials] = {}
_lock = threading.Lock()


def secret_string(arn: str) -> str:
    """The current value of one secret (``AWSCURRENT``)."""
    import boto3  # only deployments that name a secret need the AWS SDK

    return boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]


def database_credentials(arn: str, *, refresh: bool = False) -> Credentials:
    """The user and password in the database secret ``arn``: read once per process and kept,
    read again with ``refresh`` (after the database refused the kept ones)."""
    with _lock:
        if refresh or arn not in _credentials:
            _credentials[arn] = _parse_credentials(arn, secret_string(arn))
        return _credentials[arn]


def _parse_credentials(arn: str, value: str) -> Credentials:
    try:
        secret = json.loads(value)
    except json.JSONDecodeError:
        raise ImproperlyConfigured(f"the database secret {arn} is not a JSON document") from None
    missing = [key for key in CREDENTIAL_KEYS if not isinstance(secret, dict) or key not in secret]
    if missing:
        raise ImproperlyConfigured(f"the database secret {arn} lacks {', '.join(missing)}")
    return Credentials(str(secret["username"]), str(secret["password"]))


def database_settings(arn: str, conn_max_age: int, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Django's ``DATABASES["default"]`` for the RDS database whose credentials are in ``arn``.

    The server's certificate is verified (``verify-full``: signed by one of the RDS CAs and
    issued for the host connected to), so a look-alike endpoint gets no password.
    """
    missing = [name for name in CONNECTION_VARIABLES if not environ.get(name)]
    if missing:
        raise ImproperlyConfigured(f"FMA_DATABASE_SECRET_ARN is set, so {', '.join(missing)} must be too")
    return {
        "ENGINE": "fma_service.rds",
        "SECRET_ARN": arn,
        "NAME": environ["FMA_DATABASE_NAME"],
        "HOST": environ["FMA_DATABASE_HOST"],
        "PORT": environ["FMA_DATABASE_PORT"],
        "CONN_MAX_AGE": conn_max_age,
        "CONN_HEALTH_CHECKS": True,  # a kept connection closed by RDS meanwhile is replaced, not failed on
        "OPTIONS": {"sslmode": "verify-full", "sslrootcert": environ["FMA_DATABASE_CA_FILE"]},
    }
