"""Fixtures of the deploy tests: the two Lambda zips, built once per session by deploy/package.py,
unpacked and run by a stand-in for Lambda's runtime (lambda_process.py), and a local Secrets
Manager (moto's server on loopback). Nothing here talks to AWS: every AWS endpoint the children
see is moto's.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
ZAPPA_PYTHON = ROOT / ".venv-zappa" / "bin" / "python"
API_ZIP = ROOT / "api_service" / "dist" / "fma-service-lambda.zip"
AGGREGATOR_ZIP = ROOT / "aggregator" / "dist" / "fma-aggregator-lambda.zip"
REGION = "us-east-1"


@dataclass(frozen=True)
class Build:
    """The output of one run of deploy/package.py."""

    api_zip: Path
    aggregator_zip: Path
    log: str
    seconds: float


@pytest.fixture(scope="session")
def built() -> Build:
    """Both zips, built once per session exactly as `make lambda-packages` builds them."""
    if not ZAPPA_PYTHON.exists():
        message = f"{ZAPPA_PYTHON} is missing (make test builds it: make .venv-zappa/.installed)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "package.py")],
        capture_output=True,
        text=True,
        timeout=1800,  # a cold cache downloads about 60 MB of wheels
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    return Build(API_ZIP, AGGREGATOR_ZIP, log, time.monotonic() - started)


def package_module() -> Any:
    """deploy/package.py, imported by path (deploy/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("fma_deploy_package", ROOT / "deploy" / "package.py")
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def runtime_top_levels() -> list[str]:
    """The top-level modules of what Lambda's runtime provides and the zips leave out (boto3, ...)."""
    names = set()
    for distribution in package_module().RUNTIME_PROVIDED:
        for file in importlib.metadata.distribution(distribution).files or ():
            top = file.parts[0]
            if len(file.parts) == 1 and file.suffix == ".py":
                names.add(top)  # a single-module distribution: six.py
            elif len(file.parts) > 1 and top not in {"..", "__pycache__"} and not top.endswith(".dist-info"):
                names.add(top)
    return sorted(names)


@dataclass(frozen=True)
class Unpacked:
    """A zip unpacked as Lambda unpacks it into /var/task, minus its compiled packages, plus what
    Lambda's runtime provides.

    The cp312 binaries cannot load into this machine's Python 3.11, so each top-level entry of
    the zip that holds a shared library is taken from this interpreter's site-packages instead:
    the same package at the same version (deploy/package.py pins the zip to this environment).
    boto3 and its dependencies, which Lambda's runtime has (/var/runtime), come from there too.
    Everything else, Django, the FMA packages, Zappa, is the zip's own code.
    """

    package: Path
    compiled: Path
    compiled_packages: tuple[str, ...]


def unpack(archive: Path, destination: Path) -> Unpacked:
    package, compiled = destination / "task", destination / "compiled"
    shutil.rmtree(destination, ignore_errors=True)
    compiled.mkdir(parents=True)
    site = Path(sysconfig.get_paths()["purelib"])
    with zipfile.ZipFile(archive) as zipped:
        members = zipped.namelist()
        binary = sorted({name.split("/")[0] for name in members if name.endswith(".so")})
        zipped.extractall(package, [name for name in members if name.split("/")[0] not in binary])
    for name in [*binary, *runtime_top_levels()]:
        if name.endswith(
            ".so"
        ):  # an extension module at the top (cffi's _cffi_backend): this machine's build
            for local in site.glob(f"{name.split('.')[0]}.*.so"):
                if not (compiled / local.name).exists():
                    (compiled / local.name).symlink_to(local)
        elif (site / name).exists() and not (compiled / name).exists():
            (compiled / name).symlink_to(site / name)
    return Unpacked(package, compiled, tuple(binary))


@pytest.fixture(scope="session")
def api_package(built: Build, tmp_path_factory: pytest.TempPathFactory) -> Unpacked:
    return unpack(built.api_zip, tmp_path_factory.mktemp("api-zip"))


@pytest.fixture(scope="session")
def aggregator_package(built: Build, tmp_path_factory: pytest.TempPathFactory) -> Unpacked:
    return unpack(built.aggregator_zip, tmp_path_factory.mktemp("aggregator-zip"))


@dataclass
class SecretsManager:
    """moto's Secrets Manager, served on loopback; ``environment`` points boto3 at it."""

    endpoint: str
    client: Any

    @property
    def environment(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            # every service, not only Secrets Manager: a call to anything else must not reach AWS
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.endpoint,
        }

    def create(self, name: str, value: str) -> str:
        return self.client.create_secret(Name=name, SecretString=value)["ARN"]


@pytest.fixture(scope="session")
def secrets_manager() -> Iterator[SecretsManager]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    try:
        yield SecretsManager(endpoint, client)
    finally:
        server.stop()


@pytest.fixture
def secrets_reads(secrets_manager: SecretsManager, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """boto3 in this process talks to moto; yields the SecretId of every GetSecretValue call it makes."""
    for name, value in secrets_manager.environment.items():
        monkeypatch.setenv(name, value)
    boto3.setup_default_session()
    reads: list[str] = []

    def record(params: dict, **_: object) -> None:
        reads.append(params["SecretId"])

    boto3.DEFAULT_SESSION.events.register("provide-client-params.secrets-manager.GetSecretValue", record)
    yield reads
    boto3.DEFAULT_SESSION = None


def child_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment, as a Lambda function has: nothing of this shell's leaks in."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",  # /var/task is read-only on Lambda
        "PYTHONUNBUFFERED": "1",  # as on Lambda: each print reaches the log at once
        **extra,
    }


@dataclass
class LambdaProcess:
    """One execution environment: the handler imported once, then invoked event by event."""

    unpacked: Unpacked
    handler: str
    environment: dict[str, str]
    log_path: Path
    process: subprocess.Popen = field(init=False)
    _log: IO[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-S",
                str(HERE / "lambda_process.py"),
                str(self.unpacked.package),
                str(self.unpacked.compiled),
                self.handler,
            ],
            env=self.environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def invoke(self, event: dict[str, Any]) -> Any:
        """The handler's return value; an exception it raised fails the test with its log."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps(event) + "\n")
        stdin.flush()
        line = stdout.readline()
        assert line, f"the handler process died:\n{self.log()[-6000:]}"
        answer = json.loads(line)
        assert "error" not in answer, f"{answer}\n{self.log()[-6000:]}"
        return answer["result"]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self._log.close()


@pytest.fixture
def start_lambda(tmp_path: Path) -> Iterator[Any]:
    """Start handler processes; all are stopped when the test ends."""
    started: list[LambdaProcess] = []

    def start(unpacked: Unpacked, handler: str, environment: dict[str, str]) -> LambdaProcess:
        process = LambdaProcess(unpacked, handler, environment, tmp_path / f"lambda-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
