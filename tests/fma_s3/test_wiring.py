"""FMA_WEIGHT_STORE=s3 and the FMA_S3_* variables: from the environment to the service's weight store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fma_core.errors import ConfigurationError
from fma_s3 import S3WeightStore, options_from_env
from fma_s3.store import DEFAULT_PART_SIZE

from .conftest import ON_MOTO, REGION, client


def test_options_come_from_the_fma_s3_variables():
    environ = {
        "FMA_S3_BUCKET": "weights",
        "FMA_S3_PREFIX": "fma/",
        "FMA_S3_REGION": "eu-west-3",
        "FMA_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "FMA_S3_ADDRESSING_STYLE": "path",
        "FMA_S3_KMS_KEY_ID": "1234abcd-12ab-34cd-56ef-1234567890ab",
        "FMA_S3_PART_SIZE": str(64 * 1024**2),
        "FMA_S3_READ_AHEAD_BYTES": str(32 * 1024**2),
        "FMA_S3_READ_CONCURRENCY": "4",
    }
    assert options_from_env(environ) == {
        "bucket": "weights",
        "prefix": "fma/",
        "region": "eu-west-3",
        "endpoint_url": "http://127.0.0.1:9000",
        "addressing_style": "path",
        "encryption": "aws:kms",
        "kms_key_id": "1234abcd-12ab-34cd-56ef-1234567890ab",
        "part_size": 64 * 1024**2,
        "read_ahead_bytes": 32 * 1024**2,
        "read_concurrency": 4,
    }
    store = S3WeightStore.from_env(environ)
    assert (store.bucket, store.prefix, store.part_size) == ("weights", "fma/", 64 * 1024**2)
    assert (store.read_ahead.budget, store.read_ahead.concurrency) == (32 * 1024**2, 4)
    assert store.client.meta.config.max_pool_connections == 4 + 10  # the read-ahead's GETs and the callers'
    assert store.client.meta.region_name == "eu-west-3"
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9000"


def test_fma_s3_encryption_chooses_the_encryption_or_none():
    environ = {"FMA_S3_BUCKET": "weights", "FMA_S3_ENCRYPTION": "none"}
    assert options_from_env(environ) == {"bucket": "weights", "encryption": "none"}
    assert S3WeightStore.from_env(environ)._encryption == {}
    with pytest.raises(ConfigurationError, match="needs encryption='aws:kms'"):
        S3WeightStore.from_env({**environ, "FMA_S3_KMS_KEY_ID": "k-1"})
    with pytest.raises(ConfigurationError, match="encryption must be one of"):
        S3WeightStore.from_env({**environ, "FMA_S3_ENCRYPTION": "rot13"})


def test_empty_variables_take_the_defaults():
    assert options_from_env(
        {"FMA_S3_BUCKET": "weights", "FMA_S3_KMS_KEY_ID": "", "FMA_S3_PART_SIZE": ""}
    ) == {"bucket": "weights"}
    assert S3WeightStore.from_env({"FMA_S3_BUCKET": "weights"}).part_size == DEFAULT_PART_SIZE


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "FMA_S3_BUCKET is not set"),
        ({"FMA_S3_BUCKET": "b", "FMA_S3_PART_SIZE": "16MB"}, "FMA_S3_PART_SIZE must be a whole number"),
        ({"FMA_S3_BUCKET": "b", "FMA_S3_READ_AHEAD_BYTES": "1G"}, "FMA_S3_READ_AHEAD_BYTES must be a whole"),
        (
            {"FMA_S3_BUCKET": "b", "FMA_S3_READ_CONCURRENCY": "many"},
            "FMA_S3_READ_CONCURRENCY must be a whole",
        ),
    ],
)
def test_missing_or_malformed_variables_are_named(environ, message):
    with pytest.raises(ConfigurationError, match=message):
        options_from_env(environ)


def service_environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMA_", "DJANGO_"))}
    return {
        **env,
        "FMA_DEVELOPMENT": "1",
        "FMA_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "fma_service.settings",
        **variables,
    }


def run_in_service(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    setup = "import django; django.setup()\nfrom django.conf import settings\nfrom fma_django.storage import weight_store\n"
    return subprocess.run(
        [sys.executable, "-c", setup + code], env=env, capture_output=True, text=True, timeout=120
    )


@ON_MOTO  # KMS keys: AWS's, served by moto
def test_fma_weight_store_s3_makes_the_service_write_to_s3(tmp_path, s3_endpoint, s3, bucket):
    key_id = client(s3_endpoint, "kms").create_key()["KeyMetadata"]["KeyId"]
    env = service_environment(
        tmp_path,
        FMA_WEIGHT_STORE="s3",
        FMA_S3_BUCKET=bucket,
        FMA_S3_PREFIX="fma/",
        FMA_S3_REGION=REGION,
        FMA_S3_ENDPOINT_URL=s3_endpoint,
        FMA_S3_ADDRESSING_STYLE="path",
        FMA_S3_KMS_KEY_ID=key_id,
    )
    code = (
        "import io, json\n"
        "store = weight_store()\n"
        "stored = store.put('updates/1/u.safetensors', io.BytesIO(b'weights'))\n"
        "print(json.dumps([settings.FMA_WEIGHT_STORE, type(store).__name__, store.prefix, stored.size]))\n"
    )
    done = run_in_service(env, code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["fma_s3.S3WeightStore", "S3WeightStore", "fma/", 7]
    head = s3.head_object(Bucket=bucket, Key="fma/updates/1/u.safetensors")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(key_id)


def test_fma_weight_store_s3_without_a_bucket_stops_the_service_with_the_reason(tmp_path):
    done = run_in_service(
        service_environment(tmp_path, FMA_WEIGHT_STORE="s3"), "print(settings.FMA_WEIGHT_STORE)"
    )
    assert done.returncode != 0
    assert "FMA_WEIGHT_STORE=s3: FMA_S3_BUCKET is not set" in done.stderr


def test_other_values_stay_a_dotted_path_and_empty_is_the_local_directory(tmp_path):
    code = (
        "print(settings.FMA_WEIGHT_STORE, settings.FMA_WEIGHT_STORE_OPTIONS, type(weight_store()).__name__)"
    )
    local = run_in_service(service_environment(tmp_path), code)
    assert local.stdout.split() == ["{}", "LocalDirectoryWeightStore"]
    dotted = run_in_service(
        service_environment(tmp_path, FMA_WEIGHT_STORE="fma_core.connectors.LocalDirectoryWeightStore"),
        "print(settings.FMA_WEIGHT_STORE, settings.FMA_WEIGHT_STORE_OPTIONS)",
    )
    assert dotted.stdout.split() == ["fma_core.connectors.LocalDirectoryWeightStore", "{}"]
