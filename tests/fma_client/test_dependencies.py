"""fma-client installs and works without any server package (no Django, no boto3, no fma-core), and
without its optional extras (mlflow)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import requires


def test_the_client_and_its_cli_import_and_encode_with_server_packages_unimportable():
    script = textwrap.dedent(
        """
        import sys

        class NoServerPackages:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"django", "rest_framework", "boto3", "fma_core", "fma_django", "fma_service", "mlflow"}:
                    raise ImportError(f"{name} is blocked in this test")

        sys.meta_path.insert(0, NoServerPackages())
        import numpy as np
        import fma_client, fma_client.cli
        from fma_client.weights import SafetensorsBody

        body = SafetensorsBody({"w": np.ones(3, np.float32)})
        assert len(body) == len(body.read())
        assert fma_client.cli.parser().parse_args(["experiments", "list"]).action == "list"
        assert fma_client.cli.parser().parse_args(["plan", "-f", "experiments"]).command == "plan"
        assert fma_client.cli.parser().parse_args(["export", "--mlflow", "file:///x", "7"]).command == "export"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_distribution_depends_only_on_the_client_libraries():
    required = [r for r in requires("fma-client") if "extra ==" not in r]  # extras are opt-in
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in required}
    assert names == {"requests", "numpy", "safetensors", "tqdm", "pyyaml"}
