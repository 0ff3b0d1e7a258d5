"""``LocalDirectoryWeightStore``: the embedded default, one directory on the local disk."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fma_core.connectors.weight_store import StoredObject, UploadedPart, WeightStore, check_key
from fma_core.errors import InvalidWeights, ObjectNotFound

_CHUNK = 1 << 20
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


class LocalDirectoryWeightStore(WeightStore):
    """Objects are files under ``root``; writes go to a temporary file renamed into place.

    A reader therefore sees a whole object or none, a crash leaves at most a stray temporary
    file (in ``root/.tmp``), and a key can never name anything outside ``root``. Multipart
    uploads keep their parts in ``root/.uploads/<upload id>/`` until completed or aborted.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._uploads = self.root / ".uploads"

    def put(self, key: str, stream: BinaryIO, *, max_bytes: int | None = None) -> StoredObject:
        path = self._path(key)
        with self._temporary() as tmp:
            size, sha256 = _copy(stream, tmp, max_bytes=max_bytes)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.name, path)
        return StoredObject(key=key, size=size, sha256=sha256)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"no weights stored under {key!r}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def start_upload(self, key: str) -> str:
        check_key(key)
        upload_id = uuid.uuid4().hex
        folder = self._uploads / upload_id
        folder.mkdir(parents=True)
        (folder / "key").write_text(key)
        return upload_id

    def put_part(
        self, key: str, upload_id: str, number: int, stream: BinaryIO, *, max_bytes: int | None = None
    ) -> UploadedPart:
        folder = self._upload(key, upload_id)
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise InvalidWeights(f"part numbers start at 1, not {number!r}")
        with self._temporary() as tmp:
            size, sha256 = _copy(stream, tmp, max_bytes=max_bytes)
        os.replace(tmp.name, folder / f"{number:05d}.part")  # a part sent again replaces the first
        return UploadedPart(number=number, size=size, etag=sha256)

    def uploaded_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        folder = self._upload(key, upload_id)
        return [_part(path) for path in sorted(folder.glob("*.part"))]

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        folder = self._upload(key, upload_id)
        received = {part.number: part for part in self.uploaded_parts(key, upload_id)}
        if [part.number for part in parts] != list(range(1, len(parts) + 1)) or not parts:
            raise InvalidWeights("an upload completes with its parts numbered 1, 2, ... n, in order")
        for part in parts:
            if received.get(part.number) != part:
                raise InvalidWeights(f"part {part.number} was not received as listed")
        path = self._path(key)
        with self._temporary() as tmp:
            for part in parts:
                with open(folder / f"{part.number:05d}.part", "rb") as source:
                    shutil.copyfileobj(source, tmp, _CHUNK)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.name, path)
        shutil.rmtree(folder, ignore_errors=True)

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            folder = self._upload(key, upload_id)
        except ObjectNotFound:
            return
        shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def _temporary(self) -> Iterator[BinaryIO]:
        """A temporary file in ``root/.tmp``, flushed to disk on success and removed on failure."""
        with tempfile.NamedTemporaryFile(dir=self._tmp, delete=False) as tmp:
            try:
                yield tmp
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:
                tmp.close()
                os.unlink(tmp.name)
                raise

    def _upload(self, key: str, upload_id: str) -> Path:
        folder = self._uploads / upload_id if _UPLOAD_ID.fullmatch(str(upload_id)) else None
        try:
            if folder is not None and (folder / "key").read_text() == key:
                return folder
        except FileNotFoundError:
            pass
        raise ObjectNotFound(f"no upload {upload_id!r} in progress for {key!r}")

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink inside root pointing out
            raise ObjectNotFound(f"no weights stored under {key!r}")
        return path


def _copy(stream: BinaryIO, target: BinaryIO, *, max_bytes: int | None) -> tuple[int, str]:
    """Copy ``stream`` into ``target`` chunk by chunk; returns the size and SHA-256 of the bytes."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise InvalidWeights(f"upload is larger than the limit of {max_bytes:,} bytes")
        digest.update(chunk)
        target.write(chunk)
    return size, digest.hexdigest()


def _part(path: Path) -> UploadedPart:
    """A stored part, its SHA-256 read back as its ETag (parts are listed rarely: on resume)."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return UploadedPart(number=int(path.stem), size=path.stat().st_size, etag=digest.hexdigest())
