"""FMA with PyTorch: the quickstart's federated loop with a small CNN (``cnn.py``) instead of numpy.

    pip install -r examples/pytorch/requirements.txt   # torch==2.13.0, the CPU build
    python examples/pytorch/run.py [--clients 10] [--rounds 20] [--aggregator fedavg] ...

The service, the experiment, the client processes and the report are the quickstart's
(``examples/quickstart/run.py``, same options); only the model differs. Each client process
imports ``cnn`` and trains it with ``torch.optim.SGD``; weights travel as safetensors.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
QUICKSTART = HERE.parent / "quickstart"

# The CNN needs fewer local epochs and a smaller step than the quickstart's logistic regression.
DEFAULTS: dict[str, Any] = {
    "model": "cnn",
    "rounds": 20,
    "epochs": 2,
    "lr": 0.05,
    "out": Path("out/pytorch"),
}


def quickstart() -> Any:
    """examples/quickstart/run.py, loaded by path (this file has the same name)."""
    if str(QUICKSTART) not in sys.path:
        sys.path.insert(0, str(QUICKSTART))  # for its own imports (digits, softmax)
    spec = importlib.util.spec_from_file_location("quickstart_run", QUICKSTART / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return quickstart().main(argv, defaults=DEFAULTS, model_dirs=(HERE,))


if __name__ == "__main__":
    main()
