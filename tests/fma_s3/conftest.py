"""An S3 for the fma-s3 tests: moto's server on loopback (real HTTP, real boto3), a bucket per test.

Nothing here talks to AWS: the credentials are fake and every client is pointed at moto.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from fma_s3 import S3WeightStore
from fma_s3.store import MIN_PART_SIZE

REGION = "us-east-1"
_buckets = itertools.count()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Fake credentials for boto3, and no profile or config file of the machine's."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def client(moto_endpoint: str, service: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=moto_endpoint,
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    """A plain boto3 client on the same server, to look at what the store left behind."""
    return client(moto_endpoint, "s3")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"fma-weights-{next(_buckets)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_store(moto_endpoint: str, bucket: str) -> Callable[..., S3WeightStore]:
    """An S3WeightStore on this test's bucket; keyword arguments override the defaults."""

    def make(**options: Any) -> S3WeightStore:
        defaults = {
            "prefix": "fma/",
            "region": REGION,
            "endpoint_url": moto_endpoint,
            "addressing_style": "path",
            "part_size": MIN_PART_SIZE,
        }
        return S3WeightStore(bucket, **{**defaults, **options})

    return make


@pytest.fixture
def store(make_store: Callable[..., S3WeightStore]) -> S3WeightStore:
    return make_store()


class FetchedBytes:
    """Counts the GETs a boto3 client makes and the body bytes S3 answers them with."""

    def __init__(self, s3_client: Any) -> None:
        self.requests: list[int] = []
        s3_client.meta.events.register("after-call.s3.GetObject", self._count)

    def _count(self, parsed: dict[str, Any], **kwargs: Any) -> None:
        self.requests.append(parsed["ContentLength"])

    @property
    def total(self) -> int:
        return sum(self.requests)
