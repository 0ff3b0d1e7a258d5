"""Settings values kept in AWS Secrets Manager, for the Lambda deployment (``terraform_deploy/``).

There the functions receive the ARNs of two secrets instead of the values: ``FMA_DATABASE_SECRET_ARN``
(JSON: ``username``, ``password``, ``host``, ``port``, ``dbname``) and ``FMA_SECRET_KEY_SECRET_ARN``
(the plain Django ``SECRET_KEY``). They are read once per execution environment, when the settings
are imported, so rotating a secret takes a new execution environment (terraform_deploy/README.md).

boto3 finds the region and the credentials the usual way (the function's role on Lambda); its
``AWS_ENDPOINT_URL_SECRETS_MANAGER`` variable points the tests at a local Secrets Manager.
Error messages name the secret and the missing keys, never a value.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ImproperlyConfigured

DATABASE_KEYS = ("username", "password", "host", "port", "dbname")


def secret_string(arn: str) -> str:
    """The current value of one secret (``AWSCURRENT``)."""
    import boto3  # only deployments that name a secret need the AWS SDK at start-up

    return boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]


def database_settings(arn: str, conn_max_age: int) -> dict[str, Any]:
    """Django's ``DATABASES["default"]`` for the PostgreSQL credentials in the secret ``arn``.

    TLS is required: the deployment's RDS instance refuses plain connections anyway, and this
    turns a misconfigured endpoint into a clear error instead of a silent downgrade.
    """
    try:
        credentials = json.loads(secret_string(arn))
    except json.JSONDecodeError:
        raise ImproperlyConfigured(f"the database secret {arn} is not a JSON document") from None
    missing = [key for key in DATABASE_KEYS if not isinstance(credentials, dict) or key not in credentials]
    if missing:
        raise ImproperlyConfigured(f"the database secret {arn} lacks {', '.join(missing)}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": str(credentials["dbname"]),
        "USER": str(credentials["username"]),
        "PASSWORD": str(credentials["password"]),
        "HOST": str(credentials["host"]),
        "PORT": str(credentials["port"]),
        "CONN_MAX_AGE": conn_max_age,
        "OPTIONS": {"sslmode": "require"},
    }
