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


SETTINGS = {"FMA_DEVELOPMENT": "1", "FMA_AGGREGATOR_RUNNER": "none"}


@pytest.fixture
def server(serve):
    # the embedded default's server settings: only the address and the data dir are chosen here
    return serve(**SETTINGS).url


@pytest.fixture(scope="module")
def refusing_server(serve_for_module):
    """The same server, one for the module's tests whose connections it answers at once (413, 401)
    without reading a body: none leaves anything behind in it."""
    return serve_for_module(**SETTINGS).url


def _enrolled_client(served) -> tuple[int, str]:
    """A developer (made as an operator makes one), an experiment, and a client enrolled in it."""
    served.create_superuser("dev", "dev-password-1234")
    token = requests.post(
        served.url + "/api-token-auth/", json={"username": "dev", "password": "dev-password-1234"}, timeout=60
    ).json()["token"]
    developer = {"Authorization": f"Token {token}"}
    created = requests.post(
        served.url + "/api/v1/models/",
        json={"name": "slow", "open_enrollment": True},
        headers=developer,
        timeout=60,
    )
    assert created.status_code == 201, created.text
    experiment = created.json()["id"]
    enrolled = requests.post(
        served.url + f"/api/v1/models/{experiment}/register_client/", json={}, timeout=60
    )
    assert enrolled.status_code in (200, 201), enrolled.text
    return experiment, enrolled.json()["credential"]


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
def test_a_3_gb_content_length_gets_413_before_any_body_is_sent(refusing_server, method, path, content_type):
    with _connect(refusing_server) as sock:
        sock.sendall(_head(method, path, length=3 * 1024**3, content_type=content_type))
        status, body = _status_and_body(sock)
    assert status == 413
    assert body["code"] == "too_large"
    assert "Content-Length" in body["detail"]


def test_the_limit_is_the_routes_own(refusing_server):
    """50 MB is too much for a login, not for an upload: that one goes on to the view, which asks
    for credentials (401) without reading the body."""
    answers = {}
    for path in ("/api-token-auth/", "/api/v1/models/1/upload_update/"):
        with _connect(refusing_server) as sock:
            sock.sendall(_head("POST", path, length=50_000_000, content_type="application/octet-stream"))
            answers[path] = _status_and_body(sock)[0]
    assert answers == {"/api-token-auth/": 413, "/api/v1/models/1/upload_update/": 401}


def test_an_upload_that_stops_midway_is_ended_and_the_service_answers_meanwhile(serve):
    """An enrolled client's upload (streamed into the view, not read ahead) that stops sending:
    after FMA_READ_TIMEOUT without a byte the request ends with a 4xx, and other requests answer
    while it waits."""
    served = serve(FMA_DEVELOPMENT="1", FMA_AGGREGATOR_RUNNER="none", FMA_READ_TIMEOUT="3", FMA_THREADS="1")
    experiment, credential = _enrolled_client(served)
    with _connect(served.url) as sock:
        sock.sendall(
            f"POST /api/v1/models/{experiment}/upload_update/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Client {credential}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: 5000000\r\n\r\n".encode()
            + b"\0" * 1000
        )
        # one thread runs requests, and this upload holds it while it waits for bytes
        assert requests.get(served.url + "/api/schema/", timeout=ANSWER_SECONDS).status_code == 200
        status, _ = _status_and_body(sock)
    assert 400 <= status < 500
