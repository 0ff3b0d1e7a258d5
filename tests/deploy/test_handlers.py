"""The handlers in the two zips answer the events AWS sends them, run from the unzipped packages
(see lambda_process.py) with the environment Terraform gives the functions: the API behind an
API Gateway HTTP API (payload format 2.0, as modules/api configures it), Zappa's manage and
raw_command events, and the aggregator's EventBridge, asynchronous and manage events. SQLite
stands in for RDS; SECRET_KEY comes from moto's Secrets Manager."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from .conftest import ROOT, SecretsManager, Unpacked, child_environment

API_HOST = "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com"


def http_api_event(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    host: str = API_HOST,
) -> dict[str, Any]:
    """An API Gateway HTTP API request in payload format 2.0, as the $default route delivers it."""
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "accept": "application/json",
            "host": host,
            "user-agent": "fma-client/0.1",
            "x-amzn-trace-id": "Root=1-67891233-abcdef012345678912345678",
            "x-forwarded-for": "203.0.113.7",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            **(headers or {}),
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": host.split(".")[0],
            "domainName": host,
            "domainPrefix": host.split(".")[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "fma-client/0.1",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "26/Nov/2026:03:00:00 +0000",
            "timeEpoch": 1795662000000,
        },
        "isBase64Encoded": False,
    }
    if body is not None:
        # HTTP APIs hand the function binary-safe bodies base64-encoded
        event["body"] = base64.b64encode(body).decode()
        event["isBase64Encoded"] = True
        event["headers"]["content-length"] = str(len(body))
    return event


def lambda_environment(
    tmp_path: Path, secrets: SecretsManager, secret_key_arn: str, **extra: str
) -> dict[str, str]:
    """What terraform_deploy gives both functions, with SQLite in place of the RDS secret."""
    return child_environment(
        tmp_path,
        DJANGO_SETTINGS_MODULE="fma_service.settings",
        FMA_SECRET_KEY_SECRET_ARN=secret_key_arn,
        FMA_DATA_DIR=str(tmp_path / "lambda-tmp"),
        FMA_ALLOWED_HOSTS=API_HOST,
        FMA_AGGREGATOR_RUNNER="lambda",
        FMA_AGGREGATOR_FUNCTION="fma-aggregator",
        AWS_LAMBDA_FUNCTION_NAME="fma-api",
        **secrets.environment,
        **extra,
    )


def snapshot(directory: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in directory.rglob("*")}


def test_the_api_zip_migrates_creates_an_account_and_answers_http_api_requests(
    api_package: Unpacked, secrets_manager: SecretsManager, start_lambda, tmp_path: Path
):
    arn = secrets_manager.create("fma-test/api/django-secret-key", "k" * 50)
    # only these come from this machine (see Unpacked); the rest is the zip's own code
    assert {"numpy", "psycopg_binary", "safetensors"} <= set(api_package.compiled_packages)
    assert not {"django", "rest_framework", "fma_service", "zappa"} & set(api_package.compiled_packages)
    before = snapshot(api_package.package)
    api = start_lambda(
        api_package, "handler.lambda_handler", lambda_environment(tmp_path, secrets_manager, arn)
    )

    # the README's first deployment: Zappa's manage event, then raw_command for the password
    assert api.invoke({"manage": "migrate --noinput"}) == {}
    assert (tmp_path / "lambda-tmp" / "fma.sqlite3").exists()
    api.invoke({"manage": "createsuperuser --noinput --username alice --email alice@example.org"})
    password = "correct horse battery staple"

    def set_password(password: str) -> object:
        return api.invoke(
            {
                "raw_command": "from django.contrib.auth import get_user_model, password_validation; "
                "u = get_user_model().objects.get(username='alice'); "
                f"password_validation.validate_password({password!r}, u); "
                f"u.set_password({password!r}); u.save()"
            }
        )

    with pytest.raises(AssertionError, match="too common"):  # the service's password rules refuse it
        set_password("password123")
    assert set_password(password) is None

    credentials = json.dumps({"username": "alice", "password": password}).encode()
    answer = api.invoke(
        http_api_event(
            "POST", "/api-token-auth/", headers={"content-type": "application/json"}, body=credentials
        )
    )
    assert answer["statusCode"] == 200, answer
    assert set(answer) == {"cookies", "isBase64Encoded", "statusCode", "headers", "body"}  # format 2.0
    token = json.loads(answer["body"])["token"]

    anonymous = api.invoke(http_api_event("GET", "/api/v1/models/"))
    assert anonymous["statusCode"] == 401
    listed = api.invoke(http_api_event("GET", "/api/v1/models/", headers={"authorization": f"Token {token}"}))
    assert listed["statusCode"] == 200, listed
    assert listed["headers"]["Content-Type"].startswith("application/json")
    assert json.loads(listed["body"])["results"] == []
    schema = api.invoke(http_api_event("GET", "/api/schema/", headers={"authorization": f"Token {token}"}))
    assert schema["statusCode"] == 200
    assert "/api/v1/models/" in schema["body"]

    # Django answers only its own host (FMA_ALLOWED_HOSTS, set by modules/api)
    assert api.invoke(http_api_event("GET", "/api/v1/", host="evil.example.com"))["statusCode"] == 400

    log = api.log()
    # Zappa logs raw events (headers, bodies) only with debug on: neither secret is in the log
    assert password not in log
    assert token not in log
    assert snapshot(api_package.package) == before  # nothing written to /var/task


def test_the_aggregator_zip_answers_eventbridge_async_and_manage_events(
    api_package: Unpacked,
    aggregator_package: Unpacked,
    secrets_manager: SecretsManager,
    start_lambda,
    tmp_path: Path,
):
    arn = secrets_manager.create("fma-test/aggregator/django-secret-key", "a" * 50)
    environment = lambda_environment(tmp_path, secrets_manager, arn)
    aggregator = start_lambda(
        aggregator_package,
        "fma_aggregator.lambda_handler.handler",
        {**environment, "AWS_LAMBDA_FUNCTION_NAME": "fma-aggregator"},
    )
    migrated = aggregator.invoke({"manage": ["migrate"]})
    assert migrated["status"] == "ok"
    assert "Applying fma_django" in migrated["output"]

    scheduled = {
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-11-26T03:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/fma-aggregator-sweep"],
        "detail": {},
    }
    assert aggregator.invoke(scheduled) == {
        "status": "swept",
        "round_ready": [],
        "uploads_expired": 0,
        "uploads_checking": 0,
        "update_weights_removed": 0,
        "orphans_removed": 0,
        "secure_rounds_advanced": 0,
        "secure_rounds_summing": 0,
    }

    # Two experiments with one update each, made through the API package (raw_command) in the
    # same database. The API's own invocation of the aggregator is tested with botocore's
    # Stubber in tests/aggregator/test_lambda.py; here the runner is off so nothing is invoked.
    api = start_lambda(
        api_package, "handler.lambda_handler", {**environment, "FMA_AGGREGATOR_RUNNER": "none"}
    )
    setup = """
import io
import numpy as np
from django.contrib.auth.models import User
from fma_core.weights import to_bytes
from fma_django import ingestion, services
developer = User.objects.create_user("developer")
weights = {"dense": np.ones((4, 3), np.float32)}
made = []
for name, params in (("good", {}), ("bad", {"aggregator": "trimmed_mean", "aggregator_params": {"trim_fraction": 0.45}})):
    experiment = services.experiment_create(developer=developer, name=name, open_enrollment=True, initial_model=weights, **params)
    client, _ = services.client_register(experiment=experiment)
    ingestion.update_submit(experiment=experiment, client=client, stream=io.BytesIO(to_bytes(weights)), num_examples=1)
    made.append(experiment)
type(made[1]).objects.filter(pk=made[1].pk).update(aggregator_params={"trim_fraction": 0.9})
print("EXPERIMENTS", made[0].pk, made[1].pk)
"""
    assert api.invoke({"raw_command": setup}) is None
    good, bad = re.search(r"EXPERIMENTS (\d+) (\d+)", api.log()).groups()

    # the API's asynchronous "round ready" invocation
    committed = aggregator.invoke({"fma": "round_ready", "experiment_id": good})
    assert committed["status"] == "committed"
    assert committed["updates"] == 1
    assert aggregator.invoke({"fma": "round_ready", "experiment_id": good})["status"] == "idle"

    failed = aggregator.invoke({"fma": "round_ready", "experiment_id": bad})
    assert failed["status"] == "failed"
    assert f"round failed: experiment {bad}:" in aggregator.log()  # the alarm's metric filter


def migrate_invocation_input() -> dict[str, Any]:
    """The event terraform_deploy's aws_lambda_invocation.migrate sends the API function on each
    deploy: main.tf's ``input = jsonencode({...})``, with the object literal read as HCL."""
    main = hcl2.loads((ROOT / "terraform_deploy" / "main.tf").read_text())
    (invocation,) = [
        r['"aws_lambda_invocation"']['"migrate"'] for r in main["resource"] if '"aws_lambda_invocation"' in r
    ]
    literal = re.fullmatch(r"\$\{jsonencode\((.*)\)\}", invocation["input"], re.DOTALL).group(1)
    return {key: value.strip('"') for key, value in hcl2.loads(f"value = {literal}\n")["value"].items()}


def test_the_deploys_migrate_invocation_migrates_and_repeats_harmlessly(
    api_package: Unpacked, secrets_manager: SecretsManager, start_lambda, tmp_path: Path
):
    """Terraform invokes the API function with this event whenever it deploys new code: the first
    run creates the schema, a repeat finds nothing to do and still succeeds (a raised error would
    fail the apply)."""
    event = migrate_invocation_input()
    assert event == {"manage": "migrate --noinput"}
    arn = secrets_manager.create("fma-test/migrate/django-secret-key", "m" * 50)
    api = start_lambda(
        api_package, "handler.lambda_handler", lambda_environment(tmp_path, secrets_manager, arn)
    )
    assert api.invoke(event) == {}
    assert "Applying fma_django.0001" in api.log()
    assert api.invoke(event) == {}
    assert api.log().count("No migrations to apply.") == 1  # the repeat, and only the repeat
    listed = "from django.db import connection; print('TABLES', connection.introspection.table_names())"
    assert api.invoke({"raw_command": listed}) is None
    assert "'fma_django_experiment'" in api.log()
