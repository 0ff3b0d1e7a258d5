"""Local weight stores that stop in the middle of a round or an upload's completion, so a test can kill
the process there.

Configured through the environment of the process under test (``FMA_WEIGHT_STORE=slow_store.SlowWeightStore``
or ``slow_store.PausingWeightStore``): ``FMA_WEIGHTS_DIR`` is its root, ``FMA_TEST_MARKER`` a file it
creates when it reaches the slow spot, ``FMA_TEST_SLOW_SECONDS`` how long it stays there.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from fma_core.connectors import LocalDirectoryWeightStore, StoredObject, UploadedPart
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


class PausingWeightStore(LocalDirectoryWeightStore):
    """A local weight store that stops in the middle of one kind of write, so a test can SIGKILL the
    process there: after creating ``FMA_TEST_MARKER`` it sleeps ``FMA_TEST_SLOW_SECONDS``.

    ``FMA_TEST_PAUSE_AT`` says where:
    - ``aggregate``: writing an aggregate, once its bytes are in the temporary file (not yet renamed);
    - ``state``: writing a round's server state, once its aggregate is stored (the state's bytes are in
      the temporary file, not yet renamed);
    - ``shard``: storing the second shard's part, once the first shard's part and record are stored;
    - ``joined``: once a sharded round's state is joined from its parts (and its aggregate before it),
      before the round commits;
    - ``scan``: reading an update's bytes for the first time, once an upload's parts are joined and
      before its update is recorded.
    """

    def __init__(self) -> None:
        super().__init__(os.environ["FMA_WEIGHTS_DIR"])
        self.marker = Path(os.environ["FMA_TEST_MARKER"])
        self.pause_at = os.environ["FMA_TEST_PAUSE_AT"]
        self.seconds = float(os.environ.get("FMA_TEST_SLOW_SECONDS", "60"))

    def _pause(self) -> None:
        self.marker.touch()
        time.sleep(self.seconds)

    def put(self, key: str, stream: BinaryIO, *, max_bytes: int | None = None) -> StoredObject:
        if self.pause_at == "aggregate" and key.startswith("aggregates/"):
            stream = _PausingStream(stream, self._pause)
        if self.pause_at == "state" and key.endswith(".state.safetensors"):
            stream = _PausingStream(stream, self._pause)
        return super().put(key, stream, max_bytes=max_bytes)

    def put_part(
        self, key: str, upload_id: str, number: int, stream: BinaryIO, *, max_bytes: int | None = None
    ) -> UploadedPart:
        if self.pause_at == "shard" and number == 2:
            self._pause()
        return super().put_part(key, upload_id, number, stream, max_bytes=max_bytes)

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        super().complete_upload(key, upload_id, parts)
        if self.pause_at == "joined" and key.endswith(".state.safetensors"):
            self._pause()

    def open(self, key: str) -> BinaryIO:
        if self.pause_at == "scan" and key.startswith("updates/"):
            self._pause()
        return super().open(key)


class _PausingStream(io.RawIOBase):
    """Hands on a stream's bytes and pauses once more than 8 KiB (the temporary file's buffer) went through,
    so they are on disk when the process is killed."""

    def __init__(self, stream: BinaryIO, pause: Callable[[], None]) -> None:
        super().__init__()
        self._stream, self._pause, self._sent = stream, pause, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._sent > 8192:
            self._pause()
        chunk = self._stream.read(size)
        self._sent += len(chunk)
        return chunk
