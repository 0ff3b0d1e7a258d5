"""A local weight store that is slow to open updates, so a test can kill a worker in the middle of a round.

Configured through the environment of the worker under test (``FMA_WEIGHT_STORE=slow_store.SlowWeightStore``):
``FMA_WEIGHTS_DIR`` is its root, ``FMA_TEST_MARKER`` a file it creates when a round starts reading
updates, ``FMA_TEST_SLOW_SECONDS`` the pause before each update is opened.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fma_core.connectors import LocalDirectoryWeightStore
from fma_core.weights import SafetensorsReader


class SlowWeightStore(LocalDirectoryWeightStore):
    def __init__(self) -> None:
        super().__init__(os.environ["FMA_WEIGHTS_DIR"])
        self.marker = Path(os.environ["FMA_TEST_MARKER"])
        self.pause = float(os.environ.get("FMA_TEST_SLOW_SECONDS", "30"))

    def open_weights(self, key: str, *, max_bytes: int | None = None) -> SafetensorsReader:
        if key.startswith("updates/"):
            self.marker.touch()
            time.sleep(self.pause)
        return super().open_weights(key, max_bytes=max_bytes)
