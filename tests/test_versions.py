"""The six packages share one version, and CHANGELOG.md's newest heading is it (CHANGELOG.md says why)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import fma_client
import fma_core

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "fma_core",
    "connectors/django",
    "connectors/s3",
    "aggregator",
    "api_service",
    "clients/python_client",
)


def test_every_package_the_modules_and_the_changelog_name_one_version():
    versions = {
        folder: tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]["version"]
        for folder in PACKAGES
    }
    newest = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert newest is not None
    assert versions == dict.fromkeys(PACKAGES, newest[1])
    assert fma_core.__version__ == fma_client.__version__ == newest[1]
