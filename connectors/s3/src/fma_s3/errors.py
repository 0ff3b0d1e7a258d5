"""What S3's error answers mean to FMA, and botocore's errors said as fma-core's.

The store maps the answers that say something about the data where it meets them (``NoSuchKey``:
``ObjectNotFound``; ``PreconditionFailed`` while reading: ``InvalidWeights``). Whatever else fails
a request is the store's, not the data's: a connection refused or broken, a timeout, a 5xx or a
throttling answer after botocore's retries, a denied access. ``translated`` raises those as
``StoreUnavailable``, so that no botocore or urllib3 type reaches fma-core, and a round given such
an error waits for the store instead of quarantining the update it was reading.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from fma_core.errors import StoreUnavailable

_MISSING = frozenset({"NoSuchKey", "NoSuchUpload", "404", "NotFound"})
# what fails a request whatever the data: botocore's own errors (connections, timeouts, bodies that
# broke while streaming: botocore wraps urllib3's and the socket's), and S3's error answers left after
# the store's own mapping. An OSError stays one: the caller's stream may be what failed (``put``).
_UNAVAILABLE = (BotoCoreError, ClientError)

Method = TypeVar("Method", bound=Callable[..., Any])


def error_code(error: ClientError) -> str:
    """S3's error code (``NoSuchKey``), or the HTTP status for answers without a body (HEAD)."""
    return str(error.response.get("Error", {}).get("Code", ""))


def is_missing(error: ClientError) -> bool:
    """The object or the multipart upload does not exist (or no longer does)."""
    return error_code(error) in _MISSING


@contextmanager
def unavailable_on_failure() -> Iterator[None]:
    """Raise a failed request's error as ``StoreUnavailable`` (its cause kept as ``__cause__``)."""
    try:
        yield
    except _UNAVAILABLE as error:
        raise StoreUnavailable(f"the S3 store failed: {_described(error)}") from error


def translated(method: Method) -> Method:
    """``method`` (a generator too) with its failed requests raised as ``StoreUnavailable``."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(*args: Any, **kwargs: Any) -> Any:
            with unavailable_on_failure():
                yield from method(*args, **kwargs)

        return generator  # type: ignore[return-value]

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with unavailable_on_failure():
            return method(*args, **kwargs)

    return call  # type: ignore[return-value]


def _described(error: BaseException) -> str:
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{error_code(error) or 'error'} (HTTP {status}) in {error.operation_name}"
    return f"{type(error).__name__}: {error}"
