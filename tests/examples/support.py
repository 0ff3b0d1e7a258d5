"""The examples are folders of scripts; the tests run them as users do (subprocesses) or load them by path."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(relative: str, name: str) -> ModuleType:
    """examples/<relative> as module ``name``, its folder on sys.path for its neighbours' imports."""
    path = EXAMPLES / relative
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def script_env() -> dict[str, str]:
    """The environment for an example's process: none of this shell's FMA or Django settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("FMA_", "DJANGO_"))}
