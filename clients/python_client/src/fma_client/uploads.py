"""Pushing an update's bytes through an upload session: parts in parallel, retried, resumed, then completed.

The server names a target for every part (its own part endpoint, or a presigned storage URL), so
this is one code path for every deployment. The source (a ``SafetensorsBody`` straight from the
arrays, or a file on disk) is read once, front to back: each byte goes into the SHA-256 that the
completion declares, and each part's bytes are handed to the part senders as they are read, so a
multi-GB file is not read a second time just to hash it. The parts a resumed session already
holds are read for the hash and not sent. A part that keeps failing does not end the push: the
session is asked which parts it holds, and only the missing ones are sent again, to fresh
targets, each read again at its offset. A server that checks large uploads after completing them
(202, state ``checking``) is polled until the check is done.

A push that gives up (the server stays unavailable, parts keep failing, a check does not end in
time) raises an error that names its idempotency key: pushing again with it resumes the same
session from wherever the first push stopped, even inside a completion that died after the
server joined the parts (the session then lists every part as received, and completing checks
and records the joined object).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from fma_client.errors import (
    CheckTimeout,
    ConflictError,
    FmaClientError,
    PermissionDenied,
    ServerUnavailable,
    TransferError,
    ValidationError,
)
from fma_client.transport import Transport
from fma_client.weights import SafetensorsBody

THREADS = 4
CHECK_TIMEOUT = 3600.0  # seconds to wait for a server's check of a large upload
_POLL_FIRST, _POLL_MAX = 0.5, 15.0  # seconds between polls of a session being checked, doubling
_CHUNK = 1 << 20


class Source(Protocol):
    """Bytes to upload: their size, and a new independent reader for each part."""

    size: int

    def open(self) -> Any: ...


class WeightsSource:
    """A model serialized on the fly: each reader is a copy of one ``SafetensorsBody``."""

    def __init__(self, body: SafetensorsBody) -> None:
        self._body = body
        self.size = body.size

    def open(self) -> SafetensorsBody:
        return self._body.copy()


class FileSource:
    """A safetensors file on disk, read by each part at its own offset."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size

    def open(self) -> BinaryIO:
        return open(self.path, "rb")


def read_all(source: Source) -> bytes:
    """The whole source in memory: for an update small enough to go in one request."""
    reader = source.open()
    try:
        return bytes(reader.read(source.size))
    finally:
        _close(reader)


class Part:
    """Bytes ``[offset, offset + size)`` of a reader, as a request body: rewinds to its start for a retry.

    Each byte read advances ``progress``; a rewind takes back what this part had counted.
    """

    def __init__(self, reader: Any, offset: int, size: int, progress: Callable[[int], None]) -> None:
        self._reader, self._offset, self._size = reader, offset, size
        self._progress = progress
        self._sent = 0
        self.seek(0)

    def __len__(self) -> int:
        return self._size - self._sent

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(_CHUNK):
            yield chunk

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        if position != 0 or whence != os.SEEK_SET:
            raise OSError("a part can only be rewound to its start")
        self._progress(-self._sent)
        self._reader.seek(self._offset)
        self._sent = 0
        return 0

    def tell(self) -> int:
        return self._sent

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._sent
        chunk = self._reader.read(left if size is None or size < 0 else min(size, left))
        self._sent += len(chunk)
        self._progress(len(chunk))
        return chunk


class Upload:
    """One push through an upload session of ``transport``'s service, under ``path`` (``…/uploads/``)."""

    def __init__(self, transport: Transport, path: str, *, threads: int = THREADS) -> None:
        self._transport = transport
        self._path = path
        self._threads = threads
        self._local = threading.local()
        self._lock = threading.Lock()

    def run(
        self,
        source: Source,
        metadata: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        check_timeout: float = CHECK_TIMEOUT,
    ) -> dict[str, Any]:
        """Start (or resume, with the same idempotency key) a session, send the parts, complete it.

        If the server checks the upload after completing it (202), wait up to ``check_timeout``
        seconds for the outcome: the update, or the refusal as the error a synchronous one raises.
        """
        key = idempotency_key or uuid.uuid4().hex
        try:
            return self._run(source, metadata, key, check_timeout)
        except (ServerUnavailable, TransferError, CheckTimeout) as error:
            raise naming(error, key) from error

    def _run(
        self, source: Source, metadata: dict[str, Any], key: str, check_timeout: float
    ) -> dict[str, Any]:
        start = {"size": source.size, "idempotency_key": key, **metadata}
        session = self._transport.json("POST", self._path, json=start, idempotent=True)
        here = f"{self._path}{session['id']}/"
        sha256: str | None = None  # known once the source has been read through
        attempts = self._transport.retry.attempts
        with self._transport.progress("update", source.size) as bar:
            for attempt in itertools.count(1):
                received = {p["number"]: p["size"] for p in session["parts"]}
                missing = [t for t in session["targets"] if received.get(t["number"]) != t["size"]]
                bar.reset()
                bar.update(source.size - sum(t["size"] for t in missing))
                if sha256 is None:
                    sha256, failure = self._send_reading(source, missing, bar)
                else:
                    failure = self._send(source, missing, bar)
                if failure is None:
                    # An ended session (a retry of a finished push) is completed too: the server
                    # answers with its update only if the hash is the one it ended with.
                    try:
                        response = self._transport.request(
                            "POST", f"{here}complete/", json={"sha256": sha256}, idempotent=True
                        )
                    except ValidationError as error:
                        if error.code != "incomplete_upload":
                            raise
                        failure = error
                    else:
                        if response.status_code != 202:
                            return response.json()
                        return self._await_check(here, response.json(), check_timeout)
                if attempt >= attempts:
                    raise TransferError(
                        f"the upload of the update did not complete after {attempts} rounds of parts: {failure}"
                    ) from failure
                session = self._transport.json("GET", here)  # the parts received, fresh targets

    def _await_check(self, here: str, session: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Poll the session, less often as time goes by, until the server's check is done."""
        deadline = time.monotonic() + timeout
        pause = _POLL_FIRST
        while session["state"] == "checking":
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckTimeout(
                    f"the server was still checking upload {session['id']} after {timeout:g} s; "
                    "it may still complete"
                )
            time.sleep(min(pause, left))
            pause = min(2 * pause, _POLL_MAX)
            session = self._transport.json("GET", here)
        if session["state"] == "completed":
            return session["update"]
        raise ValidationError(
            session["reason"] or f"the upload is {session['state']}", code=session.get("reason_code") or None
        )

    def _send_reading(
        self, source: Source, targets: list[dict], bar: Any
    ) -> tuple[str, FmaClientError | None]:
        """Read the source once, front to back, hashing every byte and handing the targets' parts to
        the senders as they are read: the SHA-256 of the whole source, and the first failure a
        resume can fix (None if every part was sent).

        At most ``threads`` parts are in flight and one more is being read: the push holds at most
        ``(threads + 1) × part size`` of the source in memory (5 × 64 MiB by default), whatever its
        size. The bytes between the targets (parts the session holds) are read for the hash only.
        """
        digest = hashlib.sha256()
        buffers = _Buffers(self._threads + 1, max((t["size"] for t in targets), default=0))
        sent: list[Future] = []
        fatal: list[BaseException] = []

        def done(buffer: bytearray) -> Callable[[Future], None]:
            def release(future: Future) -> None:
                if future.exception() is not None:
                    fatal.append(future.exception())
                buffers.put(buffer)

            return release

        reader = source.open()
        try:
            with (
                self._sender(bar) as send,
                ThreadPoolExecutor(
                    max(1, min(self._threads, len(targets))), thread_name_prefix="fma-part"
                ) as pool,
            ):
                position = 0
                for target in sorted(targets, key=lambda t: t["offset"]):
                    _hash(reader, target["offset"] - position, digest)
                    buffer = buffers.get()  # waits while every buffer is in flight
                    if fatal:
                        raise fatal[0]
                    view = memoryview(buffer)[: target["size"]]
                    _read_into(reader, view)
                    digest.update(view)
                    position = target["offset"] + target["size"]
                    future = pool.submit(send, target, _Held(view), 0)
                    future.add_done_callback(done(buffer))
                    sent.append(future)
                _hash(reader, source.size - position, digest)
        finally:
            _close(reader)
        failures = [failure for failure in (future.result() for future in sent) if failure is not None]
        return digest.hexdigest(), failures[0] if failures else None

    def _send(self, source: Source, targets: list[dict], bar: Any) -> FmaClientError | None:
        """PUT the targets' parts in parallel, each read again from the source at its offset; the
        first error that a resume can fix, else None."""
        if not targets:
            return None
        with (
            self._sender(bar) as send,
            ThreadPoolExecutor(min(self._threads, len(targets)), thread_name_prefix="fma-part") as pool,
        ):
            failures = [
                f for f in pool.map(lambda t: send(t, source.open(), t["offset"]), targets) if f is not None
            ]
        return failures[0] if failures else None

    @contextmanager
    def _sender(self, bar: Any) -> Iterator[Callable[[dict, Any, int], FmaClientError | None]]:
        """``send(target, reader, offset)``: PUT the target's part, read from ``reader`` at ``offset``
        (closed afterwards), on its thread's own connection; the error a resume can fix, else None."""
        transports: list[Transport] = []

        def progress(n: int) -> None:
            with self._lock:
                bar.update(n)

        def send(target: dict, reader: Any, offset: int) -> FmaClientError | None:
            transport = getattr(self._local, "transport", None)
            if transport is None:  # one connection per thread: requests' sessions are not shared
                transport = self._local.transport = self._transport.fork()
                with self._lock:
                    transports.append(transport)
            try:
                part = Part(reader, offset, target["size"], progress)
                response = transport.request(
                    target["method"], target["url"], body=part, headers=target.get("headers"), idempotent=True
                )
                response.close()
            except (ServerUnavailable, TransferError) as error:
                return error
            except ConflictError as error:
                if error.code == "upload_joined":  # an interrupted complete joined every part: complete it
                    return None
                raise
            except PermissionDenied as error:
                if transport.is_service(target["url"]):
                    raise
                return error  # a presigned URL that expired: the resume asks for fresh ones
            finally:
                _close(reader)
            return None

        try:
            yield send
        finally:
            for transport in transports:
                transport.close()


def naming(error: FmaClientError, key: str) -> FmaClientError:
    """The same error, telling how to resume the push (or send it again, counted once): with its idempotency key."""
    named = type(error)(
        f"{error.detail}; push again with idempotency_key={key!r} to resume it",
        status_code=error.status_code,
        code=error.code,
        response=error.response,
    )
    named.idempotency_key = key
    return named


def _hash(reader: Any, size: int, digest: Any) -> None:
    """Read ``size`` bytes of ``reader`` into ``digest``, a chunk at a time."""
    while size > 0:
        chunk = reader.read(min(_CHUNK, size))
        if not chunk:
            raise FmaClientError("the update's source ended before its size: was it changed while pushed?")
        digest.update(chunk)
        size -= len(chunk)


def _read_into(reader: Any, view: memoryview) -> None:
    """Fill ``view`` with the next bytes of ``reader`` (straight into it where the reader can)."""
    filled = 0
    while filled < len(view):
        if hasattr(reader, "readinto"):
            count = reader.readinto(view[filled:])
        else:
            chunk = reader.read(len(view) - filled)
            count = len(chunk)
            view[filled : filled + count] = chunk
        if not count:
            raise FmaClientError("the update's source ended before its size: was it changed while pushed?")
        filled += count


class _Buffers:
    """Up to ``count`` part buffers, made when first needed and reused: parts read into them fault
    in no fresh pages, and taking one waits while all are in flight."""

    def __init__(self, count: int, size: int) -> None:
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._left, self._size = count, size

    def get(self) -> bytearray:
        if self._free.empty() and self._left > 0:
            self._left -= 1
            return bytearray(self._size)
        return self._free.get()

    def put(self, buffer: bytearray) -> None:
        self._free.put(buffer)


class _Held:
    """A part's bytes held in memory, read like a file: each read is a slice of them, not a copy."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._position = view, 0

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else min(self._position + size, len(self._view))
        chunk = self._view[self._position : end]
        self._position = end
        return chunk

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        self._position = position
        return position


def _close(reader: Any) -> None:
    if hasattr(reader, "close"):
        reader.close()
