"""The upload reader: bytes arrive intact, a reader that stops early leaves no thread behind."""

from __future__ import annotations

import io
import threading

import pytest

from fma_django.api.transfer import BodyStream, Prefetched
from fma_django.errors import LengthRequired


class FakeRequest:
    def __init__(self, body: bytes, length: str | None) -> None:
        self.META = {"CONTENT_LENGTH": length} if length is not None else {}
        self._body = io.BytesIO(body)

    def read(self, size: int) -> bytes:
        return self._body.read(size)


def test_prefetched_body_reads_everything_in_order():
    body = bytes(range(256)) * 20_000  # about 5 MB: several chunks
    with Prefetched(BodyStream(FakeRequest(body, str(len(body)))), depth=2) as stream:
        parts = []
        while chunk := stream.read(777_777):
            parts.append(chunk)
    assert b"".join(parts) == body


def test_stopping_early_ends_the_reader_thread():
    body = b"x" * (8 << 20)
    before = threading.active_count()
    with Prefetched(BodyStream(FakeRequest(body, str(len(body)))), depth=1) as stream:
        assert len(stream.read(1024)) == 1024
    assert threading.active_count() == before


def test_errors_of_the_source_reach_the_consumer():
    class Broken(FakeRequest):
        def read(self, size: int) -> bytes:
            raise OSError("connection reset")

    with (
        Prefetched(BodyStream(Broken(b"", "10"))) as stream,
        pytest.raises(OSError, match="connection reset"),
    ):
        stream.read(10)


def test_a_body_without_content_length_is_refused():
    with pytest.raises(LengthRequired):
        BodyStream(FakeRequest(b"abc", None))
