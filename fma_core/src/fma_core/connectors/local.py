"""``LocalDirectoryWeightStore``: the embedded default, one directory on the local disk."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from fma_core.connectors.weight_store import StoredObject, WeightStore, check_key
from fma_core.errors import InvalidWeights, ObjectNotFound

_CHUNK = 1 << 20


class LocalDirectoryWeightStore(WeightStore):
    """Objects are files under ``root``; writes go to a temporary file renamed into place.

    A reader therefore sees a whole object or none, a crash leaves at most a stray temporary
    file (in ``root/.tmp``), and a key can never name anything outside ``root``.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, stream: BinaryIO, *, max_bytes: int | None = None) -> StoredObject:
        path = self._path(key)
        digest = hashlib.sha256()
        size = 0
        with tempfile.NamedTemporaryFile(dir=self._tmp, delete=False) as tmp:
            try:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise InvalidWeights(f"upload is larger than the limit of {max_bytes:,} bytes")
                    digest.update(chunk)
                    tmp.write(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:
                tmp.close()
                os.unlink(tmp.name)
                raise
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.name, path)
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"no weights stored under {key!r}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink inside root pointing out
            raise ObjectNotFound(f"no weights stored under {key!r}")
        return path
