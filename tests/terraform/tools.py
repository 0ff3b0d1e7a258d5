"""What the terraform checks do when a tool they need is missing."""

import os

import pytest


def require_tool(available: bool, what: str) -> None:
    """Skip on a developer's machine with a message saying how to get the tool; under CI=true,
    where the Makefile installs everything, a missing tool is a failure, never a silent skip."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}: under CI=true this check must run")
    pytest.skip(f"{what}; under CI=true this fails instead")
