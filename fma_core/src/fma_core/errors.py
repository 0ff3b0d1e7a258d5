"""The exceptions fma-core raises; callers map them to HTTP errors, task retries or log lines."""


class FmaError(Exception):
    """Base class of every error raised on purpose by FMA."""


class InvalidWeights(FmaError, ValueError):
    """Weights that cannot be accepted: malformed file, wrong tensors, non-finite values, too big.

    ``tensor`` names the offending tensor when there is one, so an API can point at it.
    """

    def __init__(self, message: str, *, tensor: str | None = None) -> None:
        super().__init__(f"tensor {tensor!r}: {message}" if tensor else message)
        self.tensor = tensor


class ConfigurationError(FmaError, ValueError):
    """An experiment's aggregator, parameters or round policy are not usable as given."""


class UnknownAggregator(ConfigurationError, LookupError):
    """No aggregation algorithm is registered under the requested name."""


class TooFewUpdates(FmaError):
    """A round has fewer usable updates than its algorithm needs (Krum: 2f + 3); it waits for more."""

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class UpdateUnreadable(FmaError):
    """One update's weights are at fault while aggregating: invalid (``InvalidWeights``), gone
    (``ObjectNotFound``), or a change from a model the round does not know. The update is quarantined
    and the round goes on without it."""

    def __init__(self, update_id: str, reason: str) -> None:
        super().__init__(f"update {update_id}: {reason}")
        self.update_id = update_id
        self.reason = reason


class LeaseLost(FmaError):
    """A round's claim is no longer the current one: another worker took the round over."""


class InvalidKey(FmaError, ValueError):
    """A weight-store key that is empty, absolute, or would escape the store's root."""


class ObjectNotFound(FmaError, LookupError):
    """The weight store holds no object under the requested key."""


class StoreUnavailable(FmaError):
    """The weight store could not serve a request for a reason that is not the data's: a connection
    refused or broken, a timeout, throttling, a server error after the client's own retries, a local
    I/O error. Stores raise it for their own transport errors (the S3 store translates botocore's);
    the round engine treats an ``OSError`` from a store the same way. Nothing is quarantined or refused
    for it: the round is given back with its updates pending, and runs again later."""
