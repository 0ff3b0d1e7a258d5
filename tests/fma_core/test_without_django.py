"""fma-core must import and work where Django (or any server package) is absent."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_fma_core_imports_and_aggregates_with_django_unimportable():
    script = textwrap.dedent(
        """
        import sys

        class NoServerPackages:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"django", "rest_framework", "boto3", "celery"}:
                    raise ImportError(f"{name} is blocked in this test")

        sys.meta_path.insert(0, NoServerPackages())
        import io, tempfile
        import numpy as np
        import fma_core.aggregators, fma_core.connectors, fma_core.policies, fma_core.rounds, fma_core.weights
        from fma_core.connectors import ExperimentConfig, InMemoryMetadataStore, LocalDirectoryWeightStore
        from fma_core.rounds import RoundEngine
        from fma_core.weights import to_bytes

        weights = LocalDirectoryWeightStore(tempfile.mkdtemp())
        metadata = InMemoryMetadataStore()
        metadata.create_experiment(ExperimentConfig("e"), clients=["c"])
        stored = weights.put("u/1", io.BytesIO(to_bytes({"w": np.ones(3, np.float32)})))
        metadata.add_update("e", client_id="c", weights_key=stored.key, content_id=stored.sha256, num_examples=3)
        assert RoundEngine(metadata, weights).run_round("e").status == "committed"
        assert not any(m.split(".")[0] == "django" for m in sys.modules)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
