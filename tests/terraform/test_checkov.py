"""checkov on terraform_deploy/, in its own virtual environment (.venv-checkov, built by the
Makefile from terraform_deploy/requirements-checkov.txt): zero failed checks, and every check
that does not run is on the justified skip list."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .hcl_config import TERRAFORM_DIR
from .tools import require_tool

REPO = TERRAFORM_DIR.parent
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
CONFIG = TERRAFORM_DIR / ".checkov.yaml"
INLINE_SKIP = re.compile(r"#checkov:skip=(CKV2?_AWS_\d+):(.*)")


def run_checkov(directory: Path) -> dict:
    require_tool(
        CHECKOV.exists(), f"{CHECKOV} is missing (make test builds it: make .venv-checkov/.installed)"
    )
    result = subprocess.run(
        [str(CHECKOV), "--directory", str(directory), "--config-file", str(CONFIG), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.stdout.strip(), f"checkov printed no report:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def inline_skips() -> dict[str, str]:
    found = {}
    for tf_file in TERRAFORM_DIR.rglob("*.tf"):
        for check_id, reason in INLINE_SKIP.findall(tf_file.read_text()):
            found[check_id] = reason.strip()
    return found


@pytest.fixture(scope="module")
def report() -> dict:
    return run_checkov(TERRAFORM_DIR)


def test_checkov_finds_no_failed_check(report):
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"]["failed_checks"]
    ]
    assert summary["failed"] == 0, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 100  # it really looked at the configuration


def test_every_skip_is_listed_with_a_reason(report):
    global_skips = yaml.safe_load(CONFIG.read_text())["skip-check"]
    config_lines = CONFIG.read_text().splitlines()
    for check_id in global_skips:
        index = config_lines.index(f"  - {check_id}")
        assert config_lines[index - 1].strip().startswith("#"), (
            f"{check_id} has no reason above it in {CONFIG.name}"
        )

    inline = inline_skips()
    assert all(len(reason) > 20 for reason in inline.values()), inline
    for check in report["results"]["skipped_checks"]:
        assert check["check_id"] in inline, f"{check['check_id']} skipped without an inline reason"
        assert check["check_result"]["suppress_comment"].strip()


def test_checkov_fails_an_insecure_fixture(tmp_path: Path):
    (tmp_path / "main.tf").write_text(
        'resource "aws_sqs_queue" "plain" {\n  name                    = "plain"\n  sqs_managed_sse_enabled = false\n}\n'
    )
    bad = run_checkov(tmp_path)
    assert bad["summary"]["failed"] >= 1
    assert "CKV_AWS_27" in {c["check_id"] for c in bad["results"]["failed_checks"]}
