"""Retries, interrupted downloads and error bodies, against a small local HTTP server that misbehaves on purpose.

The FMA service never fails like this on demand, so these tests stand in for a proxy or a
flaky network with ``http.server`` in a thread; every byte still goes over a real socket.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fma_client import (
    Client,
    ConflictError,
    Developer,
    FmaClientError,
    NotFound,
    Retry,
    ServerUnavailable,
    TransferError,
    ValidationError,
    WebClient,
    read_file,
)
from fma_client.weights import encode

pytestmark = pytest.mark.usefixtures("upload_sessions_only")  # these test the upload-session path

FAST = Retry(attempts=3, backoff=0)
WEIGHTS = {"w": np.arange(300_000, dtype=np.float32), "b": np.ones(3, np.float32)}
BLOB = encode(WEIGHTS)
ETAG = f'"{hashlib.sha256(BLOB).hexdigest()}"'


class Recorded:
    """What the fake server saw: one (method, path, headers, body) per request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.peers: list[tuple[str, int]] = []  # the client's address: one per TCP connection


@pytest.fixture
def fake() -> Iterator[Callable]:
    """Start a server whose answers come from ``respond(handler, attempt_number, recorded)``."""
    servers = []

    def start(respond: Callable, *, tls: tuple[Path, Path] | None = None) -> tuple[str, Recorded]:
        recorded = Recorded()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded.requests.append((self.command, self.path, dict(self.headers), body))
                recorded.peers.append(self.client_address)
                respond(self, len(recorded.requests), recorded)

            do_GET = do_POST = do_PUT = handle_one  # noqa: N815

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        # shutdown() returns at the loop's next poll: 0.5 s by default, at each test's teardown
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{server.server_address[1]}", recorded

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes | dict | list, **headers: str) -> None:
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("Content-Type", headers.pop("content_type", "application/json"))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(data)


def serve_weights(handler: BaseHTTPRequestHandler, *, cut_at: int | None = None) -> None:
    """The weights (or the part after a Range start); ``cut_at`` closes the connection mid-body."""
    start = 0
    if handler.headers.get("Range") and handler.headers.get("If-Range") == ETAG:
        start = int(handler.headers["Range"].removeprefix("bytes=").rstrip("-"))
    handler.send_response(206 if start else 200)
    handler.send_header("Content-Length", str(len(BLOB) - start))
    handler.send_header("ETag", ETAG)
    handler.end_headers()
    handler.wfile.write(BLOB[start : cut_at if cut_at is not None else None])
    if cut_at is not None:
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_RDWR)
        handler.close_connection = True


class UploadService:
    """The upload-session protocol as the FMA service speaks it, in parts of ``PART`` bytes.

    ``fail(handler, number, recorded)`` may answer a part's PUT itself (return True) to make it
    fail; ``storage``, when given, is the base URL of presigned targets (another fake server).
    """

    PART = 1 << 19

    def __init__(self, fail: Callable | None = None, storage: str | None = None) -> None:
        self.fail = fail or (lambda handler, number, recorded: False)
        self.storage = storage
        self.start: dict = {}
        self.completion: dict = {}
        self.parts: dict[int, bytes] = {}

    def session(self, base: str) -> dict:
        size = self.start["size"]
        targets = []
        for number, offset in enumerate(range(0, size, self.PART), start=1):
            where = self.storage or base
            url = f"{where}/api/v1/models/7/uploads/u1/parts/{number}/"
            if self.storage:
                url = f"{where}/bucket/key?partNumber={number}&X-Amz-Signature=s{number}"
            targets.append(
                {
                    "number": number,
                    "offset": offset,
                    "size": min(self.PART, size - offset),
                    "method": "PUT",
                    "url": url,
                    "headers": {},
                }
            )
        parts = [{"number": n, "size": len(b), "etag": "e"} for n, b in sorted(self.parts.items())]
        return {"id": "u1", "state": "open", "parts": parts, "targets": targets}

    def respond(self, handler, attempt, recorded) -> None:
        method, path, _, body = recorded.requests[-1]
        base = f"http://127.0.0.1:{handler.server.server_address[1]}"
        if method == "PUT":
            number = int(path.split("/parts/")[1].strip("/")) if "/parts/" in path else int(path[-1])
            if not self.fail(handler, number, recorded):
                self.parts[number] = body
                reply(handler, 200, {"number": number, "size": len(body), "etag": "e"})
        elif path.endswith("/uploads/"):
            self.start, self.parts = json.loads(body), {}
            reply(handler, 201, self.session(base))
        elif path.endswith("/complete/"):
            joined = b"".join(self.parts[n] for n in sorted(self.parts))
            self.completion = json.loads(body)
            assert hashlib.sha256(joined).hexdigest() == self.completion["sha256"]
            reply(handler, 201, {"id": 1, "status": "pending", "size_bytes": len(joined)})
        else:
            reply(handler, 200, self.session(base))


def puts(recorded: Recorded) -> list[str]:
    return [path for method, path, _, _ in recorded.requests if method == "PUT"]


def test_a_part_is_retried_on_5xx_with_its_whole_body_under_one_idempotency_key(fake):
    service = UploadService(
        fail=lambda h, number, r: (
            number == 2
            and len([p for p in puts(r) if "/parts/2/" in p]) < 3
            and reply(h, 503, b"<html>upstream busy</html>", content_type="text/html") is None
        )
    )
    url, recorded = fake(service.respond)
    with Client(url, 7, token="u.s", retry=FAST, quiet=True, threads=2) as client:
        assert client.push(WEIGHTS, num_examples=4)["id"] == 1
    assert recorded.requests[0][1] == "/api/v1/models/7/uploads/"
    assert (service.start["num_examples"], service.start["size"]) == (4, len(BLOB))
    assert "sha256" not in service.start  # declared when completing, hashed as the parts were read
    assert service.completion["sha256"] == hashlib.sha256(BLOB).hexdigest()
    second = [body for method, path, _, body in recorded.requests if path.endswith("/parts/2/")]
    assert second == [BLOB[UploadService.PART : 2 * UploadService.PART]] * 3
    assert b"".join(service.parts[n] for n in sorted(service.parts)) == BLOB
    assert all(headers["Authorization"] == "Client u.s" for _, _, headers, _ in recorded.requests)


def test_a_part_that_keeps_breaking_is_resumed_and_only_the_missing_parts_are_sent_again(fake):
    def cut(handler, number, recorded):
        if number == 1 and len([p for p in puts(recorded) if "/parts/1/" in p]) <= FAST.attempts:
            handler.close_connection = True  # the connection breaks with no answer
            return True
        return False

    service = UploadService(fail=cut)
    url, recorded = fake(service.respond)
    with Client(url, 7, token="u.s", retry=FAST, quiet=True) as client:
        assert client.push(WEIGHTS, num_examples=1)["id"] == 1
    sent = puts(recorded)
    assert sorted(p.split("/parts/")[1] for p in sent) == ["1/"] * (FAST.attempts + 1) + ["2/", "3/"]
    methods = [(m, p) for m, p, _, _ in recorded.requests if m != "PUT"]
    assert methods == [
        ("POST", "/api/v1/models/7/uploads/"),
        ("GET", "/api/v1/models/7/uploads/u1/"),
        ("POST", "/api/v1/models/7/uploads/u1/complete/"),
    ]


def test_parts_go_to_presigned_targets_without_the_credential(fake):
    storage_parts: dict[int, bytes] = {}

    def store(handler, attempt, recorded):
        number = int(handler.path.split("partNumber=")[1].split("&")[0])
        storage_parts[number] = recorded.requests[-1][3]
        reply(handler, 200, b"", ETag='"etag"')

    storage, stored = fake(store)
    service = UploadService(storage=storage)

    def respond(handler, attempt, recorded):
        if recorded.requests[-1][1].endswith("/complete/"):
            service.parts = storage_parts
        service.respond(handler, attempt, recorded)

    url, api = fake(respond)
    with Client(url, 7, token="u.s", retry=FAST, quiet=True) as client:
        assert client.push(WEIGHTS, num_examples=1)["id"] == 1
    assert len(stored.requests) == 3
    assert all("Authorization" not in headers for _, _, headers, _ in stored.requests)
    assert all(headers["Authorization"] == "Client u.s" for _, _, headers, _ in api.requests)
    assert puts(api) == []


def test_429_is_retried_and_giving_up_says_how_often_it_tried(fake):
    url, recorded = fake(lambda h, attempt, r: reply(h, 429, {"detail": "slow down"}, Retry_After="0"))
    with (
        Client(url, 7, token="u.s", retry=FAST, quiet=True) as client,
        pytest.raises(ServerUnavailable) as failed,
    ):
        client.latest()
    assert len(recorded.requests) == 3
    assert "tried 3 times" in str(failed.value)
    assert "slow down" in str(failed.value)
    assert "try again later" in str(failed.value)


def test_a_request_without_idempotency_is_not_repeated_after_it_reached_the_server(fake):
    url, recorded = fake(
        lambda h, attempt, r: reply(h, 500, b"Internal Server Error", content_type="text/plain")
    )
    with Client(url, 7, token="u.s", retry=FAST, quiet=True) as client, pytest.raises(ServerUnavailable):
        client.rotate_credential()  # a second rotation would lose the first one's new secret
    assert len(recorded.requests) == 1


def test_a_score_report_is_retried_since_the_server_keeps_one_per_aggregate(fake):
    url, recorded = fake(
        lambda h, attempt, r: (
            reply(h, 500, b"Internal Server Error", content_type="text/plain")
            if attempt == 1
            else reply(h, 201, {"id": 1, "aggregate": 3})
        )
    )
    with Client(url, 7, token="u.s", retry=FAST, quiet=True) as client:
        assert client.report_scores(3, {"f1": 0.5})["aggregate"] == 3
    assert len(recorded.requests) == 2


def test_an_unreachable_server_is_reported_after_the_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    with (
        Client(f"http://127.0.0.1:{port}", 7, token="u.s", retry=FAST, quiet=True) as client,
        pytest.raises(ServerUnavailable) as failed,
    ):
        client.pull(for_training=False)
    assert "tried 3 times" in str(failed.value)
    assert "check the URL" in str(failed.value)


def test_non_json_and_field_error_bodies_become_readable_typed_errors(fake):
    answers = {
        "/api/v1/models/1/get_latest_aggregate/": (404, b"<h1>Not Found</h1>\n<p>nginx</p>"),
        "/api/v1/models/2/get_latest_aggregate/": (400, {"data": ["too short"], "non_field_errors": ["bad"]}),
        "/api/v1/models/3/get_latest_aggregate/": (409, {"detail": "key reused", "code": "conflict"}),
    }
    url, _ = fake(lambda h, attempt, r: reply(h, *answers[h.path]))
    with Client(url, 1, token="u.s", retry=FAST, quiet=True) as one, pytest.raises(NotFound) as missing:
        one.latest()
    assert "Not Found nginx" in str(missing.value)
    with (
        Client(url, 2, token="u.s", retry=FAST, quiet=True) as two,
        pytest.raises(ValidationError) as invalid,
    ):
        two.latest()
    assert invalid.value.detail == "data: too short; bad"
    with (
        Client(url, 3, token="u.s", retry=FAST, quiet=True) as three,
        pytest.raises(ConflictError) as conflict,
    ):
        three.latest()
    assert (conflict.value.code, conflict.value.status_code) == ("conflict", 409)


def test_a_download_cut_mid_body_resumes_where_it_broke(fake):
    def respond(handler, attempt, recorded):
        if handler.path.endswith("get_latest_aggregate/"):
            reply(handler, 200, {"id": 9, "result": "/api/v1/model_aggregates/9/weights/"})
        else:
            serve_weights(handler, cut_at=len(BLOB) // 2 if attempt == 2 else None)

    url, recorded = fake(respond)
    with Client(url, 7, token="u.s", retry=FAST, quiet=True) as client:
        weights, aggregate = client.pull(for_training=False)
    assert aggregate == 9
    assert list(weights) == ["w", "b"]
    np.testing.assert_array_equal(weights["w"], WEIGHTS["w"])
    resumed = recorded.requests[2][2]
    start = int(resumed["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= len(BLOB) // 2  # from what had arrived, not from the start
    assert resumed["If-Range"] == ETAG


def test_a_download_that_keeps_breaking_is_reported_clearly(fake):
    def respond(handler, attempt, recorded):
        if handler.path.endswith("get_latest_aggregate/"):
            reply(handler, 200, {"id": 9, "result": "/api/v1/model_aggregates/9/weights/"})
        else:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(BLOB)))
            handler.end_headers()  # no ETag: the client cannot resume, so it starts over each time
            handler.wfile.write(BLOB[:1000])
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True

    url, recorded = fake(respond)
    with (
        Client(url, 7, token="u.s", retry=FAST, quiet=True) as client,
        pytest.raises(TransferError) as broken,
    ):
        client.pull(for_training=False)
    assert f"3 times: the connection closed with {len(BLOB) - 1000:,} bytes still to come" in str(
        broken.value
    )
    assert all("Range" not in headers for _, _, headers, _ in recorded.requests)


def test_weights_that_do_not_match_their_etag_are_refused(fake):
    def respond(handler, attempt, recorded):
        if handler.path.endswith("get_latest_aggregate/"):
            reply(handler, 200, {"id": 9, "result": "/api/v1/model_aggregates/9/weights/"})
        else:
            reply(handler, 200, BLOB, ETag='"' + "0" * 64 + '"', content_type="application/octet-stream")

    url, _ = fake(respond)
    with (
        Client(url, 7, token="u.s", retry=FAST, quiet=True) as client,
        pytest.raises(TransferError, match="SHA-256"),
    ):
        client.pull(for_training=False)


def test_web_client_survives_a_non_json_error_body(fake):
    url, _ = fake(lambda h, attempt, r: reply(h, 502, b"Bad Gateway", content_type="text/plain"))
    client = WebClient(3, uuid="6f1c2e4a-0000-4000-8000-000000000000", url=url, retry=FAST)
    with pytest.raises(ServerUnavailable) as failed:
        client.get_current_artifact()
    assert failed.value.status_code == 502
    assert "Bad Gateway" in str(failed.value)


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: a private CA's, as far as the client knows."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_is_verified_by_default_and_a_ca_bundle_makes_a_private_certificate_trusted(fake, tmp_path):
    cert, key = _certificate(tmp_path)
    url, recorded = fake(lambda h, attempt, r: reply(h, 200, {}), tls=(cert, key))
    with (
        Client(url, 7, token="u.s", retry=FAST, quiet=True) as client,
        pytest.raises(FmaClientError) as refused,
    ):
        client.latest()
    assert "CA bundle" in str(refused.value)
    assert recorded.requests == []
    with Client(url, 7, token="u.s", retry=FAST, quiet=True, verify=str(cert)) as client:
        assert client.latest() == {}


def test_links_to_the_service_written_as_http_behind_a_tls_proxy_are_followed_over_https(fake, tmp_path):
    cert, key = _certificate(tmp_path)
    port = []

    def respond(handler, attempt, recorded):
        if handler.path.endswith(
            "get_latest_aggregate/"
        ):  # what Django writes without SECURE_PROXY_SSL_HEADER
            reply(
                handler,
                200,
                {"id": 2, "result": f"http://127.0.0.1:{port[0]}/api/v1/model_aggregates/2/weights/"},
            )
        else:
            serve_weights(handler)

    url, recorded = fake(respond, tls=(cert, key))
    port.append(url.rsplit(":", 1)[1])
    with Client(url, 7, token="u.s", retry=FAST, quiet=True, verify=str(cert)) as client:
        assert client.pull(for_training=False).aggregate == 2
    assert [headers["Authorization"] for _, _, headers, _ in recorded.requests] == ["Client u.s"] * 2


def test_a_progress_bar_shows_for_large_transfers_unless_quiet(fake, capsys):
    url, _ = fake(UploadService().respond)
    large = {"w": np.zeros(2 * 1024 * 1024, np.float32)}  # 8 MiB
    with Client(url, 7, token="u.s", retry=FAST) as client:
        client.push(large, num_examples=1)
        assert "update" in capsys.readouterr().err
        client.push({"w": np.zeros(10, np.float32)}, num_examples=1)
        assert capsys.readouterr().err == ""
    with Client(url, 7, token="u.s", retry=FAST, quiet=True) as client:
        client.push(large, num_examples=1)
        assert capsys.readouterr().err == ""


def test_weights_come_from_the_target_the_server_names_without_the_credential(fake, tmp_path):
    storage, stored = fake(lambda h, attempt, r: serve_weights(h))

    def respond(handler, attempt, recorded):
        if handler.path.endswith("get_latest_aggregate/"):  # a presigned link, as with S3
            reply(handler, 200, {"id": 4, "result": f"{storage}/bucket/agg-4?X-Amz-Signature=abc"})
        else:  # the API's own download endpoint redirecting to storage
            handler.send_response(302)
            handler.send_header("Location", f"{storage}/bucket/latest?X-Amz-Signature=def")
            handler.send_header("Content-Length", "0")
            handler.end_headers()

    url, api = fake(respond)
    with Client(url, 7, token="u.s", retry=FAST, quiet=True) as client:
        weights, aggregate = client.pull(for_training=False)
    with Developer(url, token="dev-token", retry=FAST, quiet=True) as dev:
        assert read_file(dev.download(7, tmp_path / "latest.safetensors"))["w"].shape == (300_000,)
    assert aggregate == 4
    np.testing.assert_array_equal(weights["b"], WEIGHTS["b"])
    assert [path for _, path, _, _ in stored.requests] == [
        "/bucket/agg-4?X-Amz-Signature=abc",
        "/bucket/latest?X-Amz-Signature=def",
    ]
    assert all("Authorization" not in headers for _, _, headers, _ in stored.requests)
    assert [headers["Authorization"] for _, _, headers, _ in api.requests] == [
        "Client u.s",
        "Token dev-token",
    ]


def test_one_connection_is_reused_for_every_call_of_a_client(fake):
    url, recorded = fake(lambda h, attempt, r: reply(h, 200, {}))
    with Client(url, 7, token="u.s", retry=FAST, quiet=True) as client:
        for _ in range(3):
            client.latest()
    assert len(recorded.peers) == 3
    assert len(set(recorded.peers)) == 1
