"""Build the two AWS Lambda zips terraform_deploy/ deploys, for python3.12 on x86_64, from this
Python 3.11 machine: ``python deploy/package.py`` (or ``make lambda-packages``).

- ``api_service/dist/fma-service-lambda.zip``: ``zappa package`` of the Django API (handler
  ``handler.lambda_handler``), run from ``.venv-zappa``. Zappa zips the site-packages of the
  virtual environment named by ``VIRTUAL_ENV``; that environment is made here and holds only
  cp312 manylinux wheels, so Zappa packages Lambda's dependencies instead of this machine's.
- ``aggregator/dist/fma-aggregator-lambda.zip``: the same dependencies without Zappa (handler
  ``fma_aggregator.lambda_handler.handler``).

Both zips carry bytecode compiled by CPython 3.12 (``/var/task`` is read-only on Lambda, so a zip
without it compiles every module again at each cold start), and neither carries what Lambda's
python3.12 runtime already has (boto3 and its dependencies, ``RUNTIME_PROVIDED``) or what only
other deployments use (Celery, uvicorn: the ``celery`` and ``server`` extras). For each zip the
build prints its sizes and a measured cold start: the CPU seconds of importing the handler and
answering a first event, run by CPython 3.12 from the unzipped package (``deploy/cold_start.py``).

Why not the machine's own packages: numpy, psycopg-binary and safetensors ship compiled code,
and the cp311 builds of this machine do not load on Lambda's python3.12; numpy ≥ 2.3 also needs
the newer glibc of python3.12's Amazon Linux 2023 (2.34): wheels for any manylinux up to 2.34.

Versions: every third-party package gets exactly the version installed in ``.venv`` (``make
test`` tests those), through a constraints file made from ``pip freeze``. The FMA packages are
built as wheels from this checkout. Downloaded wheels are kept in ``.cache/lambda-wheels/``; once
it holds them, a build needs no network at all. The installed dependencies are kept in
``build/lambda/deps/`` and reused while nothing that decides them changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "lambda"
CACHE = ROOT / ".cache" / "lambda-wheels"
ZAPPA_PYTHON = ROOT / ".venv-zappa" / "bin" / "python"
ZAPPA_STAGE = "production"
COLD_START = Path(__file__).with_name("cold_start.py")

API_ZIP = ROOT / "api_service" / "dist" / "fma-service-lambda.zip"
AGGREGATOR_ZIP = ROOT / "aggregator" / "dist" / "fma-aggregator-lambda.zip"

# The FMA packages, built from this checkout (they are not on PyPI).
LOCAL_PACKAGES = ("fma_core", "connectors/django", "connectors/s3", "aggregator", "api_service")
# What Zappa's handler imports at run time besides the standard library and boto3.
ZAPPA_RUNTIME = ("werkzeug", "durationpy")

# Lambda's python3.12 runtime: CPython 3.12 on Amazon Linux 2023 (glibc 2.34), x86_64 as in
# terraform_deploy/modules/function. pip takes a platform tag literally, so every manylinux tag
# that glibc 2.34 satisfies is named (numpy's wheels say manylinux_2_28, psycopg's 2_17).
GLIBC_MINOR = 34
PLATFORM = (
    *(f"--platform=manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 4, -1)),
    "--platform=manylinux2014_x86_64",
    "--platform=manylinux2010_x86_64",
    "--platform=manylinux1_x86_64",
    "--python-version=3.12",
    "--implementation=cp",
    "--abi=cp312",
    "--only-binary=:all:",
)

# Lambda's limit for a package deployed through S3, as Terraform deploys these: 250 MB unzipped.
# (A direct upload, `aws lambda update-function-code --zip-file`, is also capped at 50 MB zipped;
# `describe` says when a zip is above that, which only rules that shortcut out.)
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
MAX_DIRECT_UPLOAD_BYTES = 50 * 1024 * 1024

# Left out of the aggregator zip, as Zappa's "exclude" leaves them out of the API's
# (api_service/zappa_settings.json): bytecode of the build machine's Python, type stubs, the
# packages' own test suites, and translation sources (Django reads only the compiled .mo files).
EXCLUDED_NAMES = frozenset({"__pycache__", "tests", "bin"})
EXCLUDED_SUFFIXES = (".pyc", ".pyi", ".po")

# In Lambda's python3.12 runtime (/var/runtime, on sys.path after the package): boto3 and what it
# requires. Bundled, they were 17 MB of each zip. The cold-start measurement puts the pinned
# versions in the runtime's place.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3")

# The cold start the build reports: Lambda's CPU share at 1 GB is about half a core, so a second
# of CPU here is already two of wall time there.
COLD_START_TARGET_SECONDS = 1.0
API_HOST = "api.invalid"
HANDLERS = {"api": "handler.lambda_handler", "aggregator": "fma_aggregator.lambda_handler.handler"}
MIGRATE_EVENTS = {"api": {"manage": "migrate --noinput"}, "aggregator": {"manage": "migrate"}}
# The first event of each measured cold start: an anonymous HTTP API request (payload format 2.0)
# that runs through Django's whole stack to a 401, and a scheduled sweep, which queries the database.
FIRST_EVENTS = {
    "api": {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/api/v1/models/",
        "rawQueryString": "",
        "headers": {"host": API_HOST, "accept": "application/json", "x-forwarded-for": "203.0.113.7"},
        "requestContext": {
            "http": {"method": "GET", "path": "/api/v1/models/", "sourceIp": "203.0.113.7"},
            "domainName": API_HOST,
            "stage": "$default",
        },
        "isBase64Encoded": False,
    },
    "aggregator": {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}},
}


@dataclass(frozen=True)
class ColdStart:
    """CPU seconds of one fresh interpreter: importing the handler, then the whole first event."""

    import_seconds: float
    total_seconds: float

    def describe(self) -> str:
        over = f" (above the {COLD_START_TARGET_SECONDS:.0f} s target)" if self.over_target else ""
        return (
            f"cold start {self.total_seconds:.2f} s CPU (import {self.import_seconds:.2f} s, "
            f"first event {self.total_seconds - self.import_seconds:.2f} s){over}"
        )

    @property
    def over_target(self) -> bool:
        return self.total_seconds > COLD_START_TARGET_SECONDS


@dataclass(frozen=True)
class Package:
    """One built zip and what Lambda will think of it."""

    path: Path
    zipped_bytes: int
    unzipped_bytes: int
    cold_start: ColdStart | None = None

    def check_limits(self) -> None:
        if self.unzipped_bytes > MAX_UNZIPPED_BYTES:
            raise SystemExit(f"{self.path}: {self.unzipped_bytes} bytes unzipped, over Lambda's 250 MB")

    def describe(self) -> str:
        direct = (
            " (deploy it through S3: above the 50 MB of a direct upload)"
            if (self.zipped_bytes > MAX_DIRECT_UPLOAD_BYTES)
            else ""
        )
        margin = (MAX_UNZIPPED_BYTES - self.unzipped_bytes) / 1e6
        cold = f"; {self.cold_start.describe()}" if self.cold_start else ""
        return (
            f"{self.path.relative_to(ROOT)}: {self.zipped_bytes / 1e6:.1f} MB zipped, "
            f"{self.unzipped_bytes / 1e6:.1f} MB unzipped ({margin:.1f} MB under Lambda's 250 MiB)"
            f"{direct}{cold}"
        )

    @classmethod
    def of(cls, path: Path, cold_start: ColdStart | None = None) -> Package:
        with zipfile.ZipFile(path) as archive:
            unzipped = sum(info.file_size for info in archive.infolist())
        return cls(path, path.stat().st_size, unzipped, cold_start)


def run(args: Sequence[str | Path], **kwargs: object) -> None:
    subprocess.run([str(a) for a in args], check=True, **kwargs)


def output(args: Sequence[str | Path]) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def constraints() -> Path:
    """Pin every third-party package to the version ``.venv`` has (the FMA packages are editable there)."""
    frozen = output([sys.executable, "-m", "pip", "freeze", "--exclude-editable"])
    pins = [line for line in frozen.splitlines() if "==" in line and not line.startswith("-")]
    path = BUILD / "constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


def local_wheels() -> list[Path]:
    """Wheels of the FMA packages from this checkout; pure Python, so any platform takes them."""
    wheels = BUILD / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    # No build isolation: .venv-zappa has the setuptools the packages need, and isolation
    # would fetch it from the index on every build.
    run(
        [ZAPPA_PYTHON, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheels]
        + [ROOT / package for package in LOCAL_PACKAGES]
    )
    for package in LOCAL_PACKAGES:  # setuptools builds in the source tree; leave the checkout clean
        shutil.rmtree(ROOT / package / "build", ignore_errors=True)
    return sorted(wheels.glob("*.whl"))


def install(target: Path, requirements: Iterable[str | Path], pins: Path, *, deps: bool = True) -> None:
    """``pip install --target`` for Lambda's platform, from the wheel cache when it can.

    The first attempt never touches the network. Only when the cache lacks a wheel are the
    missing ones downloaded from the index into the cache, and the install is repeated offline.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    requirements = [str(r) for r in requirements]
    common = [*PLATFORM, "--quiet", "-c", pins, *([] if deps else ["--no-deps"]), *requirements]
    offline = [ZAPPA_PYTHON, "-m", "pip", "install", "--no-compile", "--target", target]
    offline += ["--no-index", "--find-links", CACHE, *common]
    if subprocess.run([str(a) for a in offline], capture_output=True).returncode != 0:
        run([ZAPPA_PYTHON, "-m", "pip", "download", "--dest", CACHE, *common])
        run(offline)  # pip installs into --target only after it resolved everything: nothing to undo


def third_party_requirements(wheels: Iterable[Path]) -> list[str]:
    """What the FMA packages require from PyPI, read from their wheels' metadata."""
    requirements = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            for line in archive.read(metadata).decode().splitlines():
                if line.startswith("Requires-Dist:") and "extra ==" not in line:
                    requirement = line.split(":", 1)[1].strip()
                    if not requirement.lower().startswith("fma-"):
                        requirements.append(requirement)
    return sorted(set(requirements))


def dependencies(name: str, wheels: list[Path], pins: Path, *, extra: Sequence[str] = ()) -> Path:
    """The third-party packages for Lambda, installed once per set of inputs and reused, less
    what Lambda's runtime provides (``RUNTIME_PROVIDED``)."""
    requirements = [*third_party_requirements(wheels), *extra]

    def fill(folder: Path) -> None:
        install(folder, requirements, pins)
        if name == "api":
            # The zip's handler.py is the CLI's own copy: its zappa package must be the same version.
            install(folder, [f"zappa=={zappa_version()}"], pins, deps=False)
        for distribution in RUNTIME_PROVIDED:
            remove_distribution(folder, distribution)

    return installed(name, requirements, pins, fill)


def runtime_packages(pins: Path) -> Path:
    """Stand-in for Lambda's /var/runtime when measuring a cold start: the pinned boto3 and its
    dependencies, which the zips leave to the runtime, compiled as the runtime's are."""

    def fill(folder: Path) -> None:
        install(folder, ["boto3"], pins)
        compile_bytecode(folder, "/var/runtime")

    return installed("runtime", ["boto3"], pins, fill)


def installed(name: str, requirements: Sequence[str], pins: Path, fill: Callable[[Path], None]) -> Path:
    """A folder of installed packages, made once per set of inputs and reused.

    Installing some 100 MB of packages is most of a build's time; the folder is named after a
    hash of everything that decides its content (pins, platform, requirements), so a change to
    any of them installs afresh and an unchanged set is reused as it is.
    """
    inputs = "\n".join([pins.read_text(), *PLATFORM, *requirements, *RUNTIME_PROVIDED, zappa_version()])
    folder = BUILD / "deps" / f"{name}-{hashlib.sha256(inputs.encode()).hexdigest()[:16]}"
    if folder.exists():
        return folder
    for stale in folder.parent.glob(f"{name}-*"):
        shutil.rmtree(stale)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    fill(partial)
    partial.rename(folder)
    return folder


def remove_distribution(folder: Path, distribution: str) -> None:
    """Uninstall one distribution from a ``pip install --target`` folder, by its RECORD."""
    normalized = distribution.lower().replace("-", "_")
    for info in folder.glob("*.dist-info"):
        if info.name.lower().split("-")[0] != normalized:
            continue
        for line in (info / "RECORD").read_text().splitlines():
            path = (folder / line.split(",")[0]).resolve()
            if path.is_relative_to(folder.resolve()):
                path.unlink(missing_ok=True)
        shutil.rmtree(info, ignore_errors=True)
    for empty in sorted(folder.rglob("*"), reverse=True):  # the packages' folders, now empty
        if empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()


def fma_packages(wheels: list[Path], pins: Path) -> Path:
    """The FMA packages of this checkout, installed on their own (their dependencies are above)."""
    target = BUILD / "fma"
    shutil.rmtree(target, ignore_errors=True)
    install(target, wheels, pins, deps=False)
    return target


@cache
def zappa_version() -> str:
    return output([ZAPPA_PYTHON, "-c", "import importlib.metadata as m; print(m.version('zappa'))"]).strip()


@cache
def lambda_python() -> Path:
    """CPython 3.12, Lambda's runtime: bytecode is valid only for the minor version that wrote it,
    and the cold start is measured with it. ``FMA_LAMBDA_PYTHON`` names one; otherwise
    ``python3.12`` on the PATH or a pyenv installation is taken."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [os.environ.get("FMA_LAMBDA_PYTHON"), shutil.which("python3.12")]
    candidates += sorted(pyenv.glob("versions/3.12*/bin/python3.12"), reverse=True)
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [str(candidate), "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return Path(candidate)
    raise SystemExit(
        "no CPython 3.12 found (FMA_LAMBDA_PYTHON, python3.12 on the PATH, pyenv): it compiles "
        "the zips' bytecode for Lambda's python3.12 runtime"
    )


def stage(name: str) -> Path:
    folder = BUILD / "stage" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def compile_bytecode(folder: Path, lambda_path: str = "/var/task") -> None:
    """Compile every module with Lambda's Python, as found on Lambda (``/var/task/...``).

    ``unchecked-hash``: the interpreter loads the .pyc without comparing it with the source's
    modification time, which unzipping does not keep anyway; the source ships beside it for
    tracebacks. A module that 3.12 cannot compile fails the build, as it would fail on Lambda.
    """
    run(
        [
            *(lambda_python(), "-m", "compileall", "-q", "-j", "0"),
            *("--invalidation-mode", "unchecked-hash", "-s", folder, "-p", lambda_path, folder),
        ]
    )


def write_zip(folder: Path, destination: Path) -> None:
    """Zip a staged folder with reproducible bytes, every file readable by Lambda's sandbox user."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(str(path.relative_to(folder)), date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    partial.replace(destination)


def build_api(wheels: list[Path], fma: Path, pins: Path) -> Path:
    """``zappa package`` over a virtual environment of cp312 wheels (see the module docstring),
    then compiled and zipped again."""
    venv = BUILD / "api-venv"
    shutil.rmtree(venv, ignore_errors=True)
    # Zappa reads <VIRTUAL_ENV>/lib/python<its own version>/site-packages.
    version = output(
        [ZAPPA_PYTHON, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"]
    )
    site = venv / "lib" / f"python{version.strip()}" / "site-packages"
    # hard links: the reused dependencies appear in the environment without being copied
    shutil.copytree(dependencies("api", wheels, pins, extra=ZAPPA_RUNTIME), site, copy_function=os.link)
    shutil.copytree(fma, site, dirs_exist_ok=True)

    zapped = BUILD / "api-zappa.zip"
    zapped.unlink(missing_ok=True)
    zappa = ZAPPA_PYTHON.parent / "zappa"
    env = {
        "PATH": f"{ZAPPA_PYTHON.parent}:/usr/bin:/bin",
        "VIRTUAL_ENV": str(venv),
        "HOME": str(BUILD),
        # Packaging talks to no AWS service, but boto3 wants a region to create its session.
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # --json: machine-readable output, which also skips Zappa's look for a newer version on PyPI.
    run([zappa, "package", ZAPPA_STAGE, "--json", "--output", zapped], cwd=ROOT / "api_service", env=env)
    shutil.rmtree(venv)
    folder = stage("api")
    with zipfile.ZipFile(zapped) as archive:
        archive.extractall(folder)
    zapped.unlink()
    compile_bytecode(folder)
    write_zip(folder, API_ZIP)
    return folder


def build_aggregator(wheels: list[Path], fma: Path, pins: Path) -> Path:
    """The aggregator's handler and the same dependencies (it sets Django up with the service's settings)."""
    folder = stage("aggregator")
    for site in (dependencies("aggregator", wheels, pins), fma):
        for path in site.rglob("*"):
            relative = path.relative_to(site)
            if (
                path.is_file()
                and not EXCLUDED_NAMES & set(relative.parts)
                and path.suffix not in EXCLUDED_SUFFIXES
            ):
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                (folder / relative).unlink(missing_ok=True)
                os.link(path, folder / relative)  # staged without copying; compiling adds files only
    compile_bytecode(folder)
    write_zip(folder, AGGREGATOR_ZIP)
    return folder


def cold_start(
    folder: Path, runtime: Path, handler: str, event: dict, environment: dict[str, str]
) -> ColdStart:
    """One cold start of the unzipped package in a fresh CPython 3.12 (deploy/cold_start.py)."""
    done = subprocess.run(
        [lambda_python(), "-S", COLD_START, folder, runtime, handler, json.dumps(event)],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **environment},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"{handler} did not answer its first event:\n{done.stderr[-4000:]}")
    measured = json.loads(done.stdout.splitlines()[-1])
    return ColdStart(measured["import_seconds"], measured["total_seconds"])


def cold_starts(built: dict[str, Path], pins: Path) -> dict[str, ColdStart]:
    """Each zip's cold start with the environment Terraform gives it, SQLite in place of RDS
    (``FIRST_EVENTS``). A first, unmeasured invocation migrates the database they share."""
    runtime = runtime_packages(pins)
    data = BUILD / "cold-start"
    shutil.rmtree(data, ignore_errors=True)
    environment = {
        "HOME": str(data),
        "DJANGO_SETTINGS_MODULE": "fma_service.settings",
        "FMA_SECRET_KEY": "cold-start-" + "k" * 40,
        "FMA_DATA_DIR": str(data),
        "FMA_ALLOWED_HOSTS": API_HOST,
        "FMA_AGGREGATOR_RUNNER": "none",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    first = next(iter(built))
    cold_start(built[first], runtime, HANDLERS[first], MIGRATE_EVENTS[first], environment)
    return {
        name: cold_start(folder, runtime, HANDLERS[name], FIRST_EVENTS[name], environment)
        for name, folder in built.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["api", "aggregator"], help="build one of the two zips")
    only = parser.parse_args(argv).only
    if not ZAPPA_PYTHON.exists():
        raise SystemExit(f"{ZAPPA_PYTHON} is missing: run `make lambda-packages`, which creates it")
    BUILD.mkdir(parents=True, exist_ok=True)
    pins = constraints()
    wheels = local_wheels()
    fma = fma_packages(wheels, pins)
    built = {}
    if only in (None, "api"):
        built["api"] = build_api(wheels, fma, pins)
    if only in (None, "aggregator"):
        built["aggregator"] = build_aggregator(wheels, fma, pins)
    measured = cold_starts(built, pins)
    for name in built:
        package = Package.of(API_ZIP if name == "api" else AGGREGATOR_ZIP, measured[name])
        package.check_limits()
        print(package.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
