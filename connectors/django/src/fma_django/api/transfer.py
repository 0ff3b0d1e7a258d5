"""Weight bytes over HTTP: a request body streamed into the weight store, a stored object streamed out.

Uploads read the WSGI input directly in the weight store's chunks, so Django never buffers the
body and server memory per upload stays at one chunk. Downloads stream the stored object (or
redirect to the store's presigned URL), with the SHA-256 as ETag and single-range support.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.utils.http import content_disposition_header
from rest_framework.renderers import BaseRenderer

from fma_django.api import parsers
from fma_django.errors import LengthRequired, ValidationFailed
from fma_django.limits import MAX_BIGINT, whole_number_range
from fma_django.storage import weight_store

SAFETENSORS = "application/octet-stream"
_CHUNK = 1 << 20
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
PRESIGNED_SECONDS = 900


class SafetensorsRenderer(BaseRenderer):
    """Lets ``Accept: application/octet-stream`` through content negotiation; errors stay JSON."""

    media_type = SAFETENSORS
    format = "safetensors"
    charset = None
    render_style = "binary"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        return json.dumps(data).encode() if data is not None else b""


class BodyStream:
    """A file-like view of the request body that reads at most Content-Length bytes, chunk by chunk."""

    def __init__(self, request: HttpRequest) -> None:
        length = request.META.get("CONTENT_LENGTH")
        if not length:
            raise LengthRequired(
                "send the weights with a Content-Length header (chunked uploads are not supported)"
            )
        try:
            self.length = int(length)
        except ValueError:
            raise ValidationFailed(f"Content-Length {length!r} is not a number") from None
        self._request = request

    def read(self, size: int = -1) -> bytes:
        return self._request.read(_CHUNK if size is None or size < 0 else size)


class Prefetched:
    """Reads a stream one chunk ahead in a thread, so receiving overlaps hashing and writing.

    The socket loop of the WSGI server holds the GIL while hashing and file writes release it, so
    the two run side by side. At most ``depth`` chunks wait in the queue: memory stays bounded.
    Use as a context manager; leaving it stops the reader before the response is sent.
    """

    def __init__(self, source: BodyStream, *, depth: int = 4) -> None:
        self._source = source
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._pending = b""
        self._finished = False
        self._thread = threading.Thread(target=self._pump, name="fma-upload-reader", daemon=True)

    def __enter__(self) -> Prefetched:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed.set()
        while self._thread.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()

    def _pump(self) -> None:
        item: bytes | BaseException | None = None
        try:
            while not self._closed.is_set():
                item = self._source.read(_CHUNK)
                if not item:
                    item = None
                    break
                self._put(item)
        except BaseException as error:  # handed to the consumer, raised there
            item = error
        self._put(item if not isinstance(item, bytes) else None)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1) -> bytes:
        size = _CHUNK if size is None or size < 0 else size
        while len(self._pending) < size and not self._finished:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self._finished = True
            else:
                self._pending = self._pending + item if self._pending else item
        chunk, self._pending = self._pending[:size], self._pending[size:]
        return chunk


def upload_option(request: HttpRequest, name: str, header: str) -> str | None:
    """An upload's metadata from the ``X-FMA-...`` header, else from the query string."""
    value = request.META.get("HTTP_" + header.upper().replace("-", "_"))
    return value if value is not None else request.GET.get(name)


def int_option(
    request: HttpRequest, name: str, header: str, *, low: int = 1, high: int = MAX_BIGINT
) -> int | None:
    """A whole number from ``low`` to ``high`` (default: an id), else a 400 naming it and the range."""
    value = upload_option(request, name, header)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise ValidationFailed(f"{name} must be {whole_number_range(low, high)}, not {value[:100]!r}")
    return number


def json_option(request: HttpRequest, name: str, header: str) -> Any:
    value = upload_option(request, name, header)
    if value in (None, ""):
        return None
    try:
        return parsers.loads(value)
    except parsers.NestedTooDeeply as error:
        raise ValidationFailed(f"{name}: {error}") from None
    except json.JSONDecodeError as error:
        raise ValidationFailed(f"{name} is not valid JSON: {error}") from None


def weights_response(
    request: HttpRequest, *, key: str, content_id: str, size: int, filename: str
) -> HttpResponse:
    """The stored weights as a download: 302 to a presigned URL, 304, 206 for a range, else 200."""
    store = weight_store()
    url = store.presigned_download_url(key, expires_in=PRESIGNED_SECONDS)
    if url:
        return HttpResponseRedirect(url)
    etag = f'"{content_id}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition_header(True, filename),
        "Cache-Control": "private, max-age=0",
    }
    if etag in [t.strip() for t in request.META.get("HTTP_IF_NONE_MATCH", "").split(",")]:
        return HttpResponse(status=304, headers=headers)
    start, stop = 0, size
    status = 200
    requested = _RANGE.match(request.META.get("HTTP_RANGE", "").strip())
    if requested and request.META.get("HTTP_IF_RANGE", etag) == etag:
        first, last = requested.groups()
        if first:
            start, stop = int(first), min(int(last) + 1, size) if last else size
        elif last:
            start = max(size - int(last), 0)
        if start >= stop:
            return HttpResponse(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    response = StreamingHttpResponse(
        _chunks(lambda: store.open(key), start, stop - start),
        status=status,
        content_type=SAFETENSORS,
        headers=headers,
    )
    response["Content-Length"] = str(stop - start)
    return response


def _chunks(open_stream: Callable[[], BinaryIO], start: int, remaining: int) -> Iterator[bytes]:
    """The bytes from ``start``, from a file opened at the first read: a response that is never
    read (a HEAD request, a client that went away) leaves no file open."""
    with open_stream() as stream:
        if start:
            stream.seek(start)
        while remaining > 0:
            chunk = stream.read(min(_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
