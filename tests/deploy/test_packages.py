"""deploy/package.py builds the two zips terraform_deploy/ deploys, for Lambda's python3.12 on x86_64,
within Lambda's size limits, with the handlers Terraform names."""

from __future__ import annotations

import ast
import re
import zipfile
from pathlib import Path

from .conftest import Build

MiB = 1024 * 1024
# manylinux_2_X wheels need glibc 2.X; python3.12's Amazon Linux 2023 has 2.34.
MANYLINUX = re.compile(r"^(?:cp312-cp312|cp3\d+-abi3)-(?:manylinux_2_(\d+)|manylinux(2014|2010|1))_x86_64$")


def names(archive: Path) -> set[str]:
    with zipfile.ZipFile(archive) as zipped:
        return set(zipped.namelist())


def wheel_tags(archive: Path, distribution: str) -> list[str]:
    """The ``Tag:`` lines of a distribution's WHEEL file inside the zip."""
    with zipfile.ZipFile(archive) as zipped:
        (wheel,) = [
            n for n in zipped.namelist() if re.fullmatch(rf"{distribution}-[^/]+\.dist-info/WHEEL", n)
        ]
        text = zipped.read(wheel).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]


def test_both_zips_are_built_within_lambdas_size_limit(built: Build):
    """250 MB unzipped binds a package deployed through S3, as Terraform deploys them."""
    for archive in (built.api_zip, built.aggregator_zip):
        with zipfile.ZipFile(archive) as zipped:
            assert zipped.testzip() is None
            unzipped = sum(info.file_size for info in zipped.infolist())
        assert unzipped <= 250 * MiB, f"{archive.name}: {unzipped / MiB:.1f} MiB unzipped"
        assert f"{archive.relative_to(archive.parents[2])}:" in built.log  # the script reports each size
        if archive.stat().st_size > 50 * MiB:  # and says when a direct upload is ruled out
            assert f"{archive.relative_to(archive.parents[2])}: " in built.log
            assert "above the 50 MB of a direct upload" in built.log


def test_compiled_packages_are_cp312_manylinux_x86_64_builds(built: Build):
    for archive in (built.api_zip, built.aggregator_zip):
        for distribution in ("numpy", "psycopg_binary", "safetensors"):
            tags = wheel_tags(archive, distribution)
            assert tags, f"{distribution} has no wheel tag in {archive.name}"
            for tag in tags:
                match = MANYLINUX.match(tag)
                assert match, f"{distribution} in {archive.name} is tagged {tag}"
                assert int(match.group(1) or 17) <= 34, f"{tag} needs a newer glibc than Lambda's 2.34"
        extensions = [n for n in names(archive) if n.endswith(".so") and ".cpython-" in n]
        assert any(
            n.startswith("numpy/_core/_multiarray_umath.cpython-312-x86_64-linux-gnu") for n in extensions
        )
        wrong = [n for n in extensions if ".cpython-312-x86_64-linux-gnu.so" not in n]
        assert wrong == [], f"extension modules for another Python or platform: {wrong[:5]}"


def test_the_api_zip_is_zappas_package_of_the_django_project_with_debug_off(built: Build):
    content = names(built.api_zip)
    # Zappa's handler at the root (Terraform's handler.lambda_handler), its runtime and the project
    assert {"handler.py", "zappa_settings.py", "zappa/handler.py", "werkzeug/__init__.py"} <= content
    assert {"fma_service/settings.py", "fma_service/aws_secrets.py", "fma_django/models.py"} <= content
    assert {"fma_aggregator/lambda_invoke.py", "fma_core/rounds.py", "django/__init__.py"} <= content
    # nothing of the build machine: no sources twice, no dev data, no scripts
    assert not [n for n in content if n.split("/")[0] in {"src", "dist", ".fma-data", "bin"}]
    assert not [n for n in content if n.endswith(".po")]

    with zipfile.ZipFile(built.api_zip) as zipped:
        generated = zipped.read("zappa_settings.py").decode()
    settings = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(generated).body
        if isinstance(node, ast.Assign)
    }
    assert settings["DEBUG"] is False  # Zappa logs every raw event, credentials included, in debug
    assert settings["LOG_LEVEL"] == "WARNING"
    assert settings["DJANGO_SETTINGS"] == "fma_service.settings"
    assert settings["BINARY_SUPPORT"] is True
    # the region and every setting come from the function's environment (Terraform), never the zip
    assert settings["ENVIRONMENT_VARIABLES"] == {}
    assert settings["AWS_EVENT_MAPPING"] == {}


def test_the_aggregator_zip_holds_its_handler_and_the_service_settings_but_no_zappa(built: Build):
    content = names(built.aggregator_zip)
    assert {"fma_aggregator/lambda_handler.py", "fma_service/settings.py", "django/__init__.py"} <= content
    assert "psycopg/__init__.py" in content
    assert not [n for n in content if n.split("/")[0] in {"zappa", "handler.py", "bin"}]
    assert not [n for n in content if n.endswith(".po")]
    with zipfile.ZipFile(built.aggregator_zip) as zipped:
        modes = {info.external_attr >> 16 for info in zipped.infolist()}
    assert modes == {0o644}  # readable by the sandbox user Lambda runs the code as


# CPython 3.12's bytecode: the magic number of every 3.12 release, then the flags of a hash-based
# .pyc whose source is not checked (PEP 552), as compileall --invalidation-mode unchecked-hash writes.
PYTHON_312_MAGIC = (3531).to_bytes(2, "little") + b"\r\n"
UNCHECKED_HASH = (1).to_bytes(4, "little")


def bytecode_of(source: str) -> str:
    """Where CPython 3.12 looks for a module's compiled code: ``a/b.py`` -> ``a/__pycache__/b.cpython-312.pyc``."""
    folder, _, file = source.rpartition("/")
    return f"{folder}/__pycache__/{file[:-3]}.cpython-312.pyc".lstrip("/")


def test_every_module_ships_with_bytecode_for_lambdas_python_312(built: Build):
    """/var/task is read-only: a module without its .pyc is compiled again at every cold start."""
    for archive in (built.api_zip, built.aggregator_zip):
        content = names(archive)
        sources = [n for n in content if n.endswith(".py")]
        bytecode = {n for n in content if n.endswith(".pyc")}
        missing = [n for n in sources if bytecode_of(n) not in bytecode]
        assert missing == [], f"{archive.name}: {len(missing)} modules without bytecode, e.g. {missing[:5]}"
        assert all(".cpython-312." in n for n in bytecode)  # nothing of the build machine's 3.11
        with zipfile.ZipFile(archive) as zipped:
            for name in ("django/db/models/query.py", "fma_core/rounds.py"):
                header = zipped.read(bytecode_of(name))[:8]
                assert header == PYTHON_312_MAGIC + UNCHECKED_HASH, f"{archive.name}: {name}: {header!r}"


def test_the_zips_leave_out_what_lambdas_runtime_has_and_what_only_servers_use(built: Build):
    """boto3 and its dependencies are in Lambda's python3.12 runtime; Celery and uvicorn serve the
    machine deployments (the celery and server extras) and are never imported on Lambda."""
    for archive in (built.api_zip, built.aggregator_zip):
        tops = {n.split("/")[0] for n in names(archive)}
        bundled = tops & {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py"}
        assert bundled == set(), f"{archive.name} bundles {bundled}"
        servers = tops & {"celery", "kombu", "billiard", "redis", "uvicorn", "a2wsgi", "gunicorn"}
        assert servers == set(), f"{archive.name} bundles {servers}"


def test_the_build_prints_each_zips_sizes_margin_and_measured_cold_start(built: Build):
    for archive in (built.api_zip, built.aggregator_zip):
        relative = archive.relative_to(archive.parents[2])
        line = re.search(rf"^{re.escape(str(relative))}: .*$", built.log, re.MULTILINE)
        assert line, built.log[-3000:]
        zipped, unzipped, margin, cold, imported = map(
            float,
            re.match(
                r".*: ([\d.]+) MB zipped, ([\d.]+) MB unzipped \(([\d.]+) MB under Lambda's .*"
                r"cold start ([\d.]+) s CPU \(import ([\d.]+) s, first event",
                line.group(0),
            ).groups(),
        )
        with zipfile.ZipFile(archive) as content:
            assert unzipped == round(sum(i.file_size for i in content.infolist()) / 1e6, 1)
        assert zipped == round(archive.stat().st_size / 1e6, 1)
        assert (
            margin == round((250 * MiB) / 1e6 - unzipped, 1)
            or abs(margin - ((250 * MiB) / 1e6 - unzipped)) < 0.11
        )
        assert 0 < imported <= cold  # a measurement, whatever its value on this machine
