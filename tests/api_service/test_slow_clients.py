"""Slow or lying clients cost a connection, not the service (issue 13 item 3).

The real fma-server, with its default server settings, while 50 anonymous connections announce a
body and never send it and a few send their headers one byte at a time: other requests still
answer, and a Content-Length above a route's limit is refused with 413 before any body is sent.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

STALLED = 50
DRIPPING = 5
ANSWER_SECONDS = 120  # generous: the requests must answer, however busy the machine is


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=ANSWER_SECONDS)


def _head(method: str, path: str, *, length: int, content_type: str = "application/json") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


# Every kind of route that reads a body: anonymous JSON, authenticated JSON, binary uploads.
STALLING_REQUESTS = [
    _head("POST", "/api-token-auth/", length=100),
    _head("POST", "/api/v1/register_client/", length=100),
    _head("POST", "/api/v1/model_updates/", length=10_000),
    _head(
        "POST", "/api/v1/models/1/upload_update/", length=1_000_000, content_type="application/octet-stream"
    ),
    _head(
        "PUT",
        f"/api/v1/models/1/uploads/{uuid.uuid4()}/parts/1/",
        length=1_000_000,
        content_type="application/octet-stream",
    ),
]


@contextlib.contextmanager
def slow_clients(url: str) -> Iterator[list[socket.socket]]:
    """50 connections that send their headers and stall, and a few that send headers byte by byte."""
    stalled = []
    for number in range(STALLED):
        sock = _connect(url)
        sock.sendall(STALLING_REQUESTS[number % len(STALLING_REQUESTS)])
        stalled.append(sock)
    stop = threading.Event()
    dripping = [_connect(url) for _ in range(DRIPPING)]
    head = _head("POST", "/api-token-auth/", length=100)

    def drip() -> None:
        for byte in head[:-2]:  # never the blank line that ends the headers
            for sock in dripping:
                with contextlib.suppress(OSError):
                    sock.send(bytes([byte]))
            if stop.wait(0.2):
                return

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        yield stalled + dripping
    finally:
        stop.set()
        dripper.join()
        for sock in stalled + dripping:
            sock.close()


def _status_and_body(sock: socket.socket) -> tuple[int, dict]:
    """The response read from ``sock`` up to the end of its JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of its answer"
        body += chunk
    return int(lines[0].split()[1]), json.loads(body) if body else {}


@pytest.fixture
def server(serve):
    # the embedded default's server settings: only the address and the data dir are chosen here
    return serve(FMA_DEVELOPMENT="1", FMA_AGGREGATOR_RUNNER="none")


def test_requests_keep_answering_while_50_connections_stall(server):
    with slow_clients(server):
        took = []
        for _ in range(10):
            started = time.monotonic()
            answer = requests.get(server + "/api/schema/", timeout=ANSWER_SECONDS)
            took.append(time.monotonic() - started)
            assert answer.status_code == 200
        login = requests.post(
            server + "/api-token-auth/", json={"username": "nobody", "password": "x"}, timeout=ANSWER_SECONDS
        )
        assert login.status_code == 400  # anonymous JSON routes answer too
    # not asserted (timings depend on the machine), printed for the record: pytest -s
    print(f"\n{len(took)} GET /api/schema/ with {STALLED + DRIPPING} slow connections open: {took}")


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("POST", "/api/v1/models/1/upload_update/", "application/octet-stream"),
        ("PUT", f"/api/v1/models/1/uploads/{uuid.uuid4()}/parts/1/", "application/octet-stream"),
        ("POST", "/api/v1/model_updates/", "application/json"),
        ("POST", "/api-token-auth/", "application/json"),
    ],
)
def test_a_3_gb_content_length_gets_413_before_any_body_is_sent(server, method, path, content_type):
    with _connect(server) as sock:
        sock.sendall(_head(method, path, length=3 * 1024**3, content_type=content_type))
        status, body = _status_and_body(sock)
    assert status == 413
    assert body["code"] == "too_large"
    assert "Content-Length" in body["detail"]
