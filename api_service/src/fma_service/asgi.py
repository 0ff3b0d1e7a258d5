"""ASGI entry point of ``fma-server``: uvicorn reads every connection; Django runs in a thread pool.

Why not a threaded WSGI server: there a thread reads the request, so ten clients that announce a
body and never send it (or drip their headers) hold ten threads, and the service stops answering.
Here uvicorn's event loop reads headers and bodies, and a thread is taken only for a request
that can run:

- a body up to ``FMA_MAX_REQUEST_BYTES`` (every route but those that take weights) is read whole
  by the event loop first, within ``FMA_READ_TIMEOUT`` seconds, else 408;
- a larger body is streamed into the view (a2wsgi), so uploads are never spooled to disk; the
  view checks the route's limit (``fma_service.body_limits``) and the caller's credentials before
  it reads a byte, and a client that then sends nothing for ``FMA_READ_TIMEOUT`` seconds has its
  request ended there;
- a client that takes nothing of a response for ``FMA_READ_TIMEOUT`` seconds is dropped: the
  rest of the response is discarded, so the thread finishes at once.

Why not Django's own ASGI handler: it reads every body into a temporary file before the view
starts, and buffers a streaming response (a model download) whole in memory.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from a2wsgi import WSGIMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class SlowClientGuard:
    """ASGI middleware: reads small bodies before the app runs and puts a time limit on every wait
    for a client (body bytes in, response bytes out)."""

    def __init__(self, app: App, *, buffer_bytes: int, timeout_seconds: float) -> None:
        self.app = app
        self.buffer_bytes = buffer_bytes
        self.timeout = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is None or length <= self.buffer_bytes:
            try:
                messages = await asyncio.wait_for(self._read_body(receive), self.timeout)
            except TimeoutError:
                await _refuse(
                    send, 408, "request_timeout", f"the request body did not arrive in {self.timeout:g} s"
                )
                return
            except _TooLong:
                await _refuse(
                    send,
                    413,
                    "too_large",
                    f"a body without Content-Length may have at most {self.buffer_bytes:,} bytes",
                )
                return
            receive = _replay(messages, receive)
        else:
            receive = self._timed_receive(receive)
        await self.app(scope, receive, self._timed_send(send))

    async def _read_body(self, receive: Receive) -> list[Message]:
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.buffer_bytes:
                raise _TooLong
            if message["type"] != "http.request" or not message.get("more_body", False):
                return messages

    def _timed_receive(self, receive: Receive) -> Receive:
        async def timed() -> Message:
            try:
                return await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                return {"type": "http.disconnect"}  # the view sees the body end short and says so

        return timed

    def _timed_send(self, send: Send) -> Send:
        gone = False

        async def timed(message: Message) -> None:
            nonlocal gone
            if gone:
                return  # dropped: the app's thread runs on to its end without waiting for anyone
            try:
                await asyncio.wait_for(send(message), self.timeout)
            except TimeoutError:
                gone = True

        return timed


class _TooLong(Exception):
    pass


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands out the messages read already, then waits on the client."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


async def _refuse(send: Send, status: int, code: str, detail: str) -> None:
    body = json.dumps({"detail": detail, "code": code}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _application() -> App:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fma_service.settings")
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    django = get_wsgi_application()
    return SlowClientGuard(
        WSGIMiddleware(django, workers=int(os.environ.get("FMA_THREADS", "8"))),
        buffer_bytes=int(settings.FMA_MAX_REQUEST_BYTES),
        timeout_seconds=float(settings.FMA_READ_TIMEOUT),
    )


application = _application()
