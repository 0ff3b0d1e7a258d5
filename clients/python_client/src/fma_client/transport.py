"""HTTP to the FMA service: one reused ``requests.Session``, retries with backoff, streamed weights.

A request is retried when it cannot have done anything yet (the connection failed) or when
repeating it is harmless (``idempotent=True``: reads, and submissions that carry an idempotency
key) and the server answered 429 or 5xx or the connection broke. The wait doubles each time,
honouring ``Retry-After``. Downloads that break mid-body resume with a Range request when the
server allows it, and are checked against the ETag (the SHA-256 of the weights).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from fma_client import __version__
from fma_client.errors import FmaClientError, ServerUnavailable, TransferError, error_from_response

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
PROGRESS_ABOVE_BYTES = 4 * 1024 * 1024
_CHUNK = 1 << 20
_SEND_BLOCK = 1 << 20
_READ = 1 << 16  # downloads are written in small pieces so a broken one keeps most of what arrived
_BROKEN = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_SHA256_ETAG = re.compile(r'^(?:W/)?"?([0-9a-f]{64})"?$')


class _LargeBlocks(HTTPAdapter):
    """Sends a streamed body (an upload's part) in reads of ``_SEND_BLOCK``, not urllib3's 16 KiB:
    each read goes through Python (the part's reader, its progress), and at 16 KiB they cost an
    upload about a quarter of the client's CPU."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **{**kwargs, "blocksize": _SEND_BLOCK})


@dataclass(frozen=True)
class Retry:
    """How often and how patiently to retry: ``attempts`` in all, waits of ``backoff·2ⁿ`` up to ``max_wait`` seconds."""

    attempts: int = 5
    backoff: float = 0.5
    max_wait: float = 30.0

    def wait(self, attempt: int, response: requests.Response | None = None) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based)."""
        if response is not None:
            after = response.headers.get("Retry-After", "")
            if after.isdigit():
                return min(float(after), self.max_wait)
        return min(self.backoff * 2 ** (attempt - 1), self.max_wait)


class Transport:
    """Sends requests to one FMA service, with its base URL, credentials, timeouts and TLS settings.

    ``timeout`` is seconds to connect and between bytes read (a pair sets them apart);
    ``verify`` is True (system CAs), a path to a CA bundle, or False (never in production).
    """

    def __init__(
        self,
        url: str,
        *,
        authorization: str | None = None,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        retry: Retry | None = None,
        verify: bool | str = True,
        quiet: bool = False,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the service URL must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self.retry = retry or Retry()
        self.quiet = quiet
        self.session = requests.Session()  # one per client: connections are reused across calls
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, _LargeBlocks())
        # Given with each request: requests would let REQUESTS_CA_BUNDLE override a session's setting.
        self.verify = verify
        self.session.headers["User-Agent"] = f"fma-client/{__version__} {requests.utils.default_user_agent()}"
        self.authorization = authorization
        parts = urlsplit(self.url)
        self._origin = (parts.scheme, parts.netloc)

    def fork(self) -> Transport:
        """A transport with the same settings and a connection of its own (one per thread)."""
        return Transport(
            self.url,
            authorization=self.authorization,
            timeout=self.timeout,
            retry=self.retry,
            verify=self.verify,
            quiet=self.quiet,
        )

    def is_service(self, url: str) -> bool:
        """Whether ``url`` is on the service's own origin (the only one that sees the credential)."""
        parts = urlsplit(self.absolute(url))
        return (parts.scheme, parts.netloc) == self._origin

    def absolute(self, path: str) -> str:
        """``path`` under the service URL; a full URL is kept, except that one on the service's
        own host keeps this client's scheme (behind a TLS proxy the server may write ``http://``
        links, and following them would send the credential in clear text)."""
        if "://" not in path:
            return urljoin(self.url, path.lstrip("/"))
        parts = urlsplit(path)
        if parts.netloc == self._origin[1] and parts.scheme != self._origin[0]:
            return urlunsplit(parts._replace(scheme=self._origin[0]))
        return path

    def close(self) -> None:
        self.session.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        body: Any = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send with retries and return a 2xx/3xx response; raise the typed error otherwise.

        ``idempotent`` defaults to True for GET/HEAD. A rewindable ``body`` (``seek``) is rewound
        before each attempt. ``kwargs`` go to ``requests.Session.request``.
        """
        if idempotent is None:
            idempotent = method.upper() in {"GET", "HEAD", "OPTIONS"}
        url = self.absolute(path)
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("verify", self.verify)
        if self.authorization and self.is_service(url):
            # Only to the service itself: a presigned storage URL must never see the credential.
            kwargs["headers"] = {"Authorization": self.authorization, **(kwargs.get("headers") or {})}
        attempt = 0
        while True:
            attempt += 1
            if body is not None and hasattr(body, "seek"):
                body.seek(0)
            try:
                response = self.session.request(method, url, data=body, **kwargs)
            except requests.exceptions.SSLError as error:
                raise FmaClientError(
                    f"could not set up a secure connection to {self.url}: {_reason(error)}; if the service "
                    "uses a private certificate authority, pass its CA bundle (verify=PATH, or --ca-bundle)"
                ) from error
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as error:
                # A refused connection never reached the server, so it is always safe to repeat. An
                # answer cut off mid-body (the server died after its headers) is a lost answer too.
                unsent = isinstance(error, requests.ConnectTimeout) or _refused(error)
                if (idempotent or unsent) and attempt < self.retry.attempts:
                    time.sleep(self.retry.wait(attempt))
                    continue
                raise ServerUnavailable(
                    f"could not reach {self.url} (tried {attempt} times): {_reason(error)}"
                ) from error
            if response.status_code in RETRY_STATUSES and idempotent and attempt < self.retry.attempts:
                wait = self.retry.wait(attempt, response)
                response.close()
                time.sleep(wait)
                continue
            if response.status_code >= 400:
                error = error_from_response(response, attempts=attempt)
                response.close()
                raise error
            return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON of a request's answer (None for an empty body such as 204)."""
        response = self.request(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise FmaClientError(
                f"the server answered {response.status_code} with something that is not JSON "
                f"({response.headers.get('Content-Type', 'no content type')}); is {self.url} an FMA service?",
                status_code=response.status_code,
            ) from None

    def pages(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every row of a paginated list, following its ``next`` links."""
        page = self.json("GET", path, params=dict(params or {}))
        while True:
            if isinstance(page, list):  # an unpaginated list
                yield from page
                return
            yield from page.get("results", [])
            if not page.get("next"):
                return
            page = self.json("GET", page["next"])

    def download(self, path: str, destination: str | os.PathLike, *, what: str = "weights") -> Path:
        """Stream a download into ``destination``, resuming after a broken connection; checks the ETag's SHA-256."""
        destination = Path(destination)
        received = 0
        digest = hashlib.sha256()
        etag = None
        url = self.absolute(path)
        attempt = 0
        with open(destination, "wb") as file, self._progress(what) as progress:
            while True:
                attempt += 1
                headers = {"Accept": "application/octet-stream"}
                if received and etag:
                    headers.update({"Range": f"bytes={received}-", "If-Range": etag})
                response = self.request("GET", url, headers=headers, stream=True)
                with response:
                    if response.status_code != 206 and received:  # the server restarted from byte 0
                        file.seek(0)
                        file.truncate()
                        received, digest = 0, hashlib.sha256()
                        progress.reset()
                    etag = response.headers.get("ETag", etag)
                    total = received + int(response.headers.get("Content-Length", 0) or 0)
                    progress.total = total or None
                    try:
                        for chunk in response.iter_content(_READ):
                            file.write(chunk)
                            digest.update(chunk)
                            received += len(chunk)
                            progress.update(len(chunk))
                    except _BROKEN as error:
                        if attempt < self.retry.attempts:
                            time.sleep(self.retry.wait(attempt))
                            url = response.url  # a presigned target stays the target
                            continue
                        raise TransferError(
                            f"the download of {what} broke after {received:,} bytes, {attempt} times: {_reason(error)}"
                        ) from error
                    if total and received != total:
                        if attempt < self.retry.attempts:
                            time.sleep(self.retry.wait(attempt))
                            url = response.url
                            continue
                        raise TransferError(
                            f"the download of {what} ended at {received:,} of {total:,} bytes"
                        )
                    break
        expected = _SHA256_ETAG.match(etag or "")
        if expected and digest.hexdigest() != expected.group(1):
            destination.unlink(missing_ok=True)
            raise TransferError(
                f"the downloaded {what} do not match their SHA-256 ({expected.group(1)[:12]}…): "
                "they were corrupted on the way"
            )
        return destination

    @contextmanager
    def temporary_download(self, path: str, *, what: str = "weights") -> Iterator[Path]:
        """Download to a temporary file that is removed afterwards."""
        with tempfile.TemporaryDirectory(prefix="fma-") as folder:
            yield self.download(path, Path(folder) / "weights.safetensors", what=what)

    def progress(self, what: str, total: int) -> Any:
        """A tqdm bar for a transfer of ``total`` bytes, or a no-op when quiet or small."""
        if self.quiet or total < PROGRESS_ABOVE_BYTES:
            return _NoProgress()
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    @contextmanager
    def _progress(self, what: str) -> Iterator[Any]:
        bar = _LazyProgress(self, what)
        try:
            yield bar
        finally:
            bar.close()


class _NoProgress:
    total: int | None = None

    def update(self, n: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _LazyProgress:
    """A download's bar, created once the size is known (from the first response's Content-Length)."""

    def __init__(self, transport: Transport, what: str) -> None:
        self._transport, self._what = transport, what
        self._bar: Any = None
        self._total: int | None = None

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        if self._bar is None and value is not None:
            self._bar = self._transport.progress(self._what, value)
        self._total = value

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def reset(self) -> None:
        if self._bar is not None:
            self._bar.reset()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _refused(error: Exception) -> bool:
    text = str(error)
    return "Connection refused" in text or "NewConnectionError" in text or "Failed to resolve" in text


def _reason(error: Exception) -> str:
    """The useful words of a requests/urllib3 error, without the object reprs around them."""
    text = str(error)
    short = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text)
    if short:
        return f"the connection closed with {int(short.group(2)):,} bytes still to come"
    match = re.search(
        r"Connection refused|Connection reset by peer|Read timed out|timed out|Failed to resolve '[^']*'"
        r"|Remote end closed connection without response|certificate verify failed: [^(]*[^ (]",
        text,
    )
    return match.group(0) if match else text[:200]
