"""``LocalDirectoryWeightStore``: the embedded default, one directory on the local disk."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fma_core.connectors.weight_store import (
    KEY_SPACES,
    ListedObject,
    ListedUpload,
    Removed,
    StoredObject,
    UploadedPart,
    WeightStore,
    check_key,
)
from fma_core.errors import InvalidKey, InvalidWeights, ObjectNotFound

_CHUNK = 1 << 20
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_SIZES = "sizes.json"
_DATA = "data"  # the object-to-be, every part written at its offset


class LocalDirectoryWeightStore(WeightStore):
    """Objects are files under ``root``; writes go to a temporary file renamed into place.

    A reader therefore sees a whole object or none, a crash leaves at most a stray temporary
    file (in ``root/.tmp``, removed by ``remove_leftovers``), and a key can never name anything
    outside ``root``. A multipart upload is one file in ``root/.uploads/<upload id>/``, each part
    written at its offset as it arrives, plus a small record per part received; completing it is
    a rename.
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
        _move_into_place(Path(tmp.name), path)
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

    def start_upload(self, key: str, part_sizes: Sequence[int]) -> str:
        check_key(key)
        if not part_sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in part_sizes):
            raise InvalidWeights(f"an upload needs one or more part sizes in bytes, not {part_sizes!r}")
        upload_id = uuid.uuid4().hex
        folder = self._uploads / upload_id
        folder.mkdir(parents=True)
        (folder / _SIZES).write_text(json.dumps(list(part_sizes)))
        with open(folder / _DATA, "wb") as data:
            data.truncate(sum(part_sizes))  # sparse: each part fills its own range as it arrives
        (folder / "key").write_text(key)  # last: only a fully prepared upload can be found
        return upload_id

    def put_part(
        self, key: str, upload_id: str, number: int, stream: BinaryIO, *, max_bytes: int | None = None
    ) -> UploadedPart:
        """Write the part straight into its range of the object-to-be, then record it.

        Its record is removed first and written again only once the bytes are on disk, so a part
        that fails half-way (too large, a broken stream, a crash) counts as never received. Parts
        are written under a shared hold of the upload's lock and completion takes it whole, so no
        part ever lands in an object already joined (and measured).

        The part's ETag is a token new with each write, not a hash of its bytes: the joined object
        is hashed once when the upload completes (``weights.scan``), and a hash per part would cost
        a third of the server's CPU for bytes that are hashed again anyway.
        """
        folder, sizes = self._started(key, upload_id)
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= len(sizes):
            raise InvalidWeights(f"this upload has parts 1 to {len(sizes)}, not {number!r}")
        limit = sizes[number - 1] if max_bytes is None else min(max_bytes, sizes[number - 1])
        record = folder / f"{number:05d}.part"
        with self._held(folder, upload_id, fcntl.LOCK_SH):
            record.unlink(missing_ok=True)
            with open(folder / _DATA, "r+b") as data:
                data.seek(sum(sizes[: number - 1]))
                size = _write(stream, data, max_bytes=limit)
                data.flush()
                os.fsync(data.fileno())
            part = UploadedPart(number=number, size=size, etag=uuid.uuid4().hex)
            with self._temporary() as tmp:
                tmp.write(json.dumps({"size": size, "etag": part.etag}).encode())
            os.replace(tmp.name, record)  # a part sent again replaces the first
        return part

    def uploaded_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        folder, _ = self._started(key, upload_id)
        with self._held(folder, upload_id, fcntl.LOCK_SH):
            return _records(folder)

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        """The parts are already in place: check them, then move the object under its key.

        Completions of one upload (twins) take turns under its lock; the later one finds it over."""
        folder, sizes = self._started(key, upload_id)
        with self._held(folder, upload_id, fcntl.LOCK_EX):
            received = {part.number: part for part in _records(folder)}
            if [part.number for part in parts] != list(range(1, len(sizes) + 1)):
                raise InvalidWeights(
                    f"an upload completes with all its parts, numbered 1 to {len(sizes)}, in order"
                )
            for part, size in zip(parts, sizes, strict=True):
                # Number and size, not the token: a part sent again after the caller listed them (a
                # client's stale retry) holds the same bytes or different ones, and the joined
                # object's hash, checked at completion, tells which.
                held = received.get(part.number)
                if held is None or held.size != part.size:
                    raise InvalidWeights(f"part {part.number} was not received as listed")
                if part.size != size:
                    raise InvalidWeights(f"part {part.number} has {part.size:,} bytes, not {size:,}")
            _move_into_place(folder / _DATA, self._path(key))
            shutil.rmtree(folder, ignore_errors=True)

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            folder = self._upload(key, upload_id)
            with self._held(folder, upload_id, fcntl.LOCK_EX, ended_ok=True):
                shutil.rmtree(folder, ignore_errors=True)
        except ObjectNotFound:
            return

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        folder = self.root.joinpath(*prefix.split("/")[:-1])
        if not _real_folder(folder, self.root):
            return
        for path in _files(folder):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix) and _is_key(key):
                try:
                    stat = path.lstat()
                except FileNotFoundError:  # removed meanwhile
                    continue
                yield ListedObject(key=key, size=stat.st_size, modified=stat.st_mtime)

    def list_uploads(self, prefix: str) -> Iterator[ListedUpload]:
        """Uploads in progress: a folder of ``.uploads`` with its key and its object-to-be (a folder
        without them is a start or a completion cut short, which ``remove_leftovers`` removes)."""
        for folder in _upload_folders(self._uploads):
            try:
                key = (folder / "key").read_text()
                if not key.startswith(prefix) or not (folder / _DATA).exists():
                    continue
                yield ListedUpload(key=key, upload_id=folder.name, modified=_newest(folder))
            except FileNotFoundError:  # completed or aborted meanwhile
                continue

    def remove_leftovers(self, *, before: float) -> Removed:
        """Temporary files not written to since ``before`` (a write killed half-way), upload folders
        whose start or completion was cut short as long ago, and the empty folders under FMA's key
        spaces (left by removed objects; ``put`` makes a folder again if one vanishes under it)."""
        removed = Removed()
        for entry in sorted(os.scandir(self._tmp), key=lambda e: e.name):
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # renamed into place meanwhile
                continue
            if entry.is_file(follow_symlinks=False) and stat.st_mtime < before:
                Path(entry.path).unlink(missing_ok=True)
                removed += Removed(1, stat.st_size)
        for folder in _upload_folders(self._uploads):
            if (folder / "key").exists() and (folder / _DATA).exists():
                continue  # an upload in progress: list_uploads
            try:
                if _newest(folder) >= before:
                    continue
                size = sum(path.lstat().st_size for path in folder.iterdir())
            except FileNotFoundError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed += Removed(1, size)
        for space in KEY_SPACES:
            top = self.root / space.rstrip("/")
            if _real_folder(top, self.root):
                _remove_empty_folders(top)
        return removed

    @contextmanager
    def _held(self, folder: Path, upload_id: str, mode: int, *, ended_ok: bool = False) -> Iterator[None]:
        """Hold the upload's lock (``flock`` on its key file: shared for parts, exclusive to complete or
        abort); ObjectNotFound once the upload is over (joined or aborted while waiting for it)."""
        try:
            lock = open(folder / "key", "rb")  # noqa: SIM115 - closed below, after the folder may be gone
        except FileNotFoundError:
            raise ObjectNotFound(f"upload {upload_id!r} is over") from None
        with lock:
            fcntl.flock(lock, mode)
            if not ended_ok and not (folder / _DATA).exists():
                raise ObjectNotFound(f"upload {upload_id!r} is over")
            yield

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

    def _started(self, key: str, upload_id: str) -> tuple[Path, list[int]]:
        """The upload's folder and declared part sizes."""
        folder = self._upload(key, upload_id)
        try:
            return folder, json.loads((folder / _SIZES).read_text())
        except FileNotFoundError:  # started by a version that kept parts apart: its client starts again
            raise ObjectNotFound(f"upload {upload_id!r} was started by an earlier version of FMA") from None

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink inside root pointing out
            raise ObjectNotFound(f"no weights stored under {key!r}")
        return path


def _move_into_place(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, making its folder first, and fsync the folder so that the
    rename itself survives a power cut (the file's bytes were fsynced before). The sweep removes
    empty folders, so the folder may vanish between the two steps: then it is made again."""
    for attempt in range(3):
        made = not target.parent.is_dir()
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            if attempt == 2 or not source.exists():
                raise
            continue
        _fsync_directory(target.parent)
        if made:  # a new folder's own entry is in its parent (its grandparents are FMA's fixed key spaces)
            _fsync_directory(target.parent.parent)
        return


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _is_key(name: str) -> bool:
    try:
        check_key(name)
    except InvalidKey:
        return False
    return True


def _real_folder(folder: Path, root: Path) -> bool:
    """``folder`` is a directory under ``root`` reached without a symbolic link."""
    parts = folder.relative_to(root).parts
    return folder.is_dir() and not any(
        root.joinpath(*parts[:n]).is_symlink() for n in range(1, len(parts) + 1)
    )


def _files(folder: Path) -> Iterator[Path]:
    """The files under ``folder`` in name order, depth first, never through a symbolic link."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _files(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def _upload_folders(uploads: Path) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(uploads), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if _UPLOAD_ID.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            yield Path(entry.path)


def _newest(folder: Path) -> float:
    """When anything in ``folder`` (or the folder itself) was last written."""
    return max([folder.lstat().st_mtime, *(path.lstat().st_mtime for path in folder.iterdir())])


def _remove_empty_folders(folder: Path) -> bool:
    """Remove the empty folders below ``folder`` (not ``folder`` itself); whether ``folder`` is now empty."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:  # removed by another sweep
        return False
    empty = True
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and _remove_empty_folders(Path(entry.path)):
            try:
                os.rmdir(entry.path)
                continue
            except OSError:  # something arrived meanwhile
                pass
        empty = False
    return empty


def _copy(stream: BinaryIO, target: BinaryIO, *, max_bytes: int | None) -> tuple[int, str]:
    """Copy ``stream`` into ``target`` chunk by chunk; returns the size and SHA-256 of the bytes."""
    digest = hashlib.sha256()
    size = _write(stream, target, max_bytes=max_bytes, each=digest.update)
    return size, digest.hexdigest()


def _write(
    stream: BinaryIO,
    target: BinaryIO,
    *,
    max_bytes: int | None,
    each: Callable[[bytes], object] | None = None,
) -> int:
    """Copy ``stream`` into ``target`` chunk by chunk, handing each chunk to ``each``; the size."""
    size = 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise InvalidWeights(f"upload is larger than the limit of {max_bytes:,} bytes")
        if each is not None:
            each(chunk)
        target.write(chunk)
    return size


def _records(folder: Path) -> list[UploadedPart]:
    """The parts an upload has received, from their records (read under the upload's lock)."""
    return [
        UploadedPart(number=int(path.stem), **json.loads(path.read_text()))
        for path in sorted(folder.glob("*.part"))
    ]
