"""``Client``: what a data holder's training script uses to take part in an experiment.

    client = Client(url, experiment=7, token=credential)
    weights, aggregate = client.pull()
    ...train...
    client.push(model.state_dict(), num_examples=len(dataset))
    weights, _ = client.wait_for_new_model()  # the round's new global model: measure it on held-out data
    client.report_evaluation({"accuracy": 0.91, "loss": 0.3}, num_examples=len(held_out))

Weights are downloaded from the link the server gives for the aggregate, and uploaded in parts to
the targets of an upload session (the API itself, or presigned storage URLs), so the script is
the same for every deployment.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from fma_client.errors import (
    ConflictError,
    FmaClientError,
    NotFound,
    NotSelected,
    ValidationError,
    WaitTimeout,
)
from fma_client.privacy import LocalPrivacy
from fma_client.results import Aggregate, Artifact, Evaluation, Score, Update, evaluation_body
from fma_client.secure import SecurePush, secure_push
from fma_client.single import SINGLE_REQUEST_BYTES, fits_one_request, push_one_request
from fma_client.transport import Retry, Transport
from fma_client.uploads import CHECK_TIMEOUT, THREADS, FileSource, Source, Upload, WeightsSource, read_all
from fma_client.weights import SafetensorsBody, Weights, as_weights, read_file

ASK_AGAIN_SECONDS = 5.0  # when a refusal as not selected came without Retry-After (a proxy dropped it)


class Model(NamedTuple):
    """Weights of the global model and the aggregate they come from (None: the initial model)."""

    weights: Weights
    aggregate: int | None


class Participation(NamedTuple):
    """Whether this client takes part in the experiment's current round; if not, the seconds to wait
    before asking again (an experiment that samples clients per round)."""

    selected: bool
    round: int
    retry_after: float | None


class Client:
    """An enrolled data holder in one experiment, authenticated by its credential (``token``).

    ``token`` is the credential ``Client.enroll`` returned (``"<uuid>.<secret>"``); keep it secret.
    Transport options: ``timeout`` (seconds, or a (connect, read) pair), ``retry``
    (``fma_client.Retry``), ``verify`` (True, or a CA bundle path), ``quiet`` (no progress bars),
    ``threads`` (parts of an upload sent at once). ``selection_wait``: the longest ``pull()`` and
    ``push()`` wait, in seconds, for a round that selects this client when the experiment samples
    clients per round (None: no limit; 0: not at all), before raising ``NotSelected``.

    An update of at most ``single_request_bytes`` goes in one request (``fma_client.single``),
    a larger one through an upload session; both keep the same guarantees.
    """

    single_request_bytes = SINGLE_REQUEST_BYTES

    def __init__(
        self,
        url: str,
        experiment: int,
        *,
        token: str,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        retry: Retry | None = None,
        verify: bool | str = True,
        quiet: bool = False,
        threads: int = THREADS,
        selection_wait: float | None = 3600.0,
        local_privacy: LocalPrivacy | None = None,
    ) -> None:
        self.experiment = int(experiment)
        self.local_privacy = local_privacy
        self.token = token
        self.threads = threads
        self.selection_wait = selection_wait
        self._transport = Transport(
            url,
            authorization=f"Client {token}",
            timeout=timeout,
            retry=retry,
            verify=verify,
            quiet=quiet,
        )
        self._last_aggregate: int | None = None
        self._names: list[str] | None = None
        self._update_kind: str | None = None  # the experiment's, learnt with the model
        self._base: Weights | None = None  # the last pulled model, kept for deltas and local privacy
        self._secure = False  # learnt from the server: the experiment aggregates securely

    @classmethod
    def enroll(
        cls,
        url: str,
        experiment: int,
        *,
        enrollment_token: str | None = None,
        **options: Any,
    ) -> Client:
        """Enroll a new client with a developer's enrollment token (or openly, if the experiment allows).

        The returned client's ``token`` is its credential: it is shown only this once, so save it
        (e.g. in a secrets store) and pass it to ``Client(...)`` next time.
        """
        own = {
            name: options.pop(name)
            for name in ("threads", "selection_wait", "local_privacy")
            if name in options
        }
        transport = Transport(url, **options)
        try:
            body = {"enrollment_token": enrollment_token} if enrollment_token else {}
            # Not retried after it reached the server: a second call would use the token again.
            enrolled = transport.json(
                "POST", f"api/v1/models/{int(experiment)}/register_client/", json=body, idempotent=False
            )
        finally:
            transport.close()
        if "credential" not in enrolled:
            raise FmaClientError(
                "the server enrolled this client without a credential (a legacy-mode experiment); "
                "use fma_client.WebClient for legacy experiments"
            )
        return cls(url, experiment, token=enrolled["credential"], **own, **options)

    @property
    def uuid(self) -> str:
        """The client's public id (the part of the token before the dot)."""
        return self.token.partition(".")[0]

    @property
    def url(self) -> str:
        return self._transport.url

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _path(self, action: str) -> str:
        return f"api/v1/models/{self.experiment}/{action}/"

    def latest(self) -> Aggregate:
        """Metadata of the newest aggregate; before the first round an empty one (falsy, ``== {}``)."""
        return Aggregate(self._transport.json("GET", self._path("get_latest_aggregate")))

    def participation(self) -> Participation:
        """Whether the current round takes this client (always, unless the experiment samples clients)."""
        answer = self._transport.json("GET", self._path("participation"))
        return Participation(bool(answer["selected"]), int(answer["round"]), answer["retry_after"])

    def wait_until_selected(self) -> Participation:
        """Ask until a round selects this client, waiting as long as the server says between asks;
        ``NotSelected`` once ``selection_wait`` seconds have passed."""
        deadline = self._selection_deadline()
        while True:
            answer = self.participation()
            if answer.selected:
                return answer
            self._wait_turn(
                deadline,
                answer.retry_after,
                f"round {answer.round} of experiment {self.experiment} did not select client {self.uuid}",
            )

    def _selection_deadline(self) -> float | None:
        return None if self.selection_wait is None else time.monotonic() + self.selection_wait

    def _wait_turn(self, deadline: float | None, retry_after: float | None, why: str) -> None:
        """Sleep until the server's ``retry_after`` (or the deadline, if sooner); NotSelected past the deadline."""
        pause = retry_after if retry_after is not None else ASK_AGAIN_SECONDS
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                given_up = NotSelected(
                    f"{why}; no round selected it within selection_wait={self.selection_wait:g} s "
                    f"(the server says to ask again in {pause:g} s)",
                    code="not_selected",
                )
                given_up.retry_after = retry_after
                raise given_up
            pause = min(pause, left)
        time.sleep(pause)

    def pull(self, *, for_training: bool = True) -> Model:
        """The current global model: the newest aggregate's weights, else the initial model.

        ``for_training``: first wait for a round that selects this client (``wait_until_selected``),
        so that the update trained from it will be taken; False fetches the model at once (to evaluate it).
        """
        if for_training:
            self.wait_until_selected()
        aggregate = self.latest()
        if aggregate:
            return self._download(aggregate["result"], aggregate["id"], aggregate.get("update_kind"))
        artifact = self._current_artifact()
        return self._download(artifact["values"], None, artifact.get("update_kind"))

    def _current_artifact(self) -> Artifact:
        artifact = Artifact(self._transport.json("GET", self._path("get_current_artifact")))
        if not artifact:
            raise NotFound(
                f"experiment {self.experiment} has no model yet: no initial model and no round done; "
                "ask its developer to give it an initial model"
            )
        return artifact

    def _download(self, link: str, aggregate: int | None, update_kind: str | None) -> Model:
        what = f"aggregate {aggregate}" if aggregate is not None else "initial model"
        with self._transport.temporary_download(link, what=what) as path:
            weights = read_file(path)
        self._last_aggregate = aggregate
        self._names = list(weights)
        self._update_kind = update_kind or "weights"
        self._base = weights if self._update_kind == "delta" or self.local_privacy is not None else None
        return Model(weights, aggregate)

    def push(
        self,
        weights: Mapping[str, Any] | list[Any],
        num_examples: int,
        metrics: Mapping[str, Any] | None = None,
        *,
        base_aggregate: int | None = None,
        idempotency_key: str | None = None,
        check_timeout: float = CHECK_TIMEOUT,
    ) -> Update | SecurePush:
        """Submit an update trained from the last pulled model; returns the accepted update.

        ``weights``: a dict of arrays, a PyTorch ``state_dict`` or a Keras ``get_weights()`` list.
        ``num_examples`` weighs the update in the average. ``base_aggregate`` defaults to the
        aggregate of the last ``pull()``. The bytes go in parts, in parallel, through an upload
        session; a part that fails is retried, and a broken upload resumes with the parts the
        server does not have yet. Each push has one idempotency key, so the server counts it once
        however often it is sent; pass the key of a push that was interrupted (the error names
        it) to resume that upload instead of starting again.

        A service that checks large updates after they arrive (behind AWS API Gateway, whose
        requests end at 29 s) is asked for the outcome until it is known: the accepted update, or
        the refusal as ``ValidationError``. After ``check_timeout`` seconds (default an hour)
        ``CheckTimeout`` names the upload, which may still be accepted; push again with the same
        idempotency key to wait for it again.

        When the experiment samples clients and the current round did not select this client, the
        server refuses the push before any byte is sent; the push waits as the server says and tries
        again, for up to ``selection_wait`` seconds, then raises ``NotSelected``.

        When the experiment aggregates securely (``secure_aggregation``; the server refuses a plain
        update before any byte is sent), the push takes part in the current secure round instead
        (``fma_client.secure``): it waits for the other clients through the four stages and returns a
        ``SecurePush`` (the round, its aggregate, how many clients finished each stage) once the round
        is unmasked, or raises ``SecureRoundFailed`` with the server's reason. Metrics are not sent.
        """
        update = self._as_update(as_weights(weights, names=self._names), base_aggregate)
        if self._secure:
            return self._secure_push(update, num_examples)
        body = SafetensorsBody(update)
        if self.local_privacy is not None:
            declared = self.local_privacy.declared()
            taken = sorted(set(metrics or {}) & set(declared))
            if taken:
                raise FmaClientError(
                    f"metrics {', '.join(taken)} are declared by local_privacy: rename yours"
                )
            metrics = {**(metrics or {}), **declared}
        try:
            return self._upload(
                WeightsSource(body), num_examples, metrics, base_aggregate, idempotency_key, check_timeout
            )
        except ConflictError as error:
            if error.code != "secure_aggregation":
                raise
            self._secure = True
            return self._secure_push(update, num_examples)
        except ValidationError as error:
            if isinstance(weights, list | tuple) and self._names is None:
                raise ValidationError(
                    f"{error.detail} (a list of arrays is named by position, 0, 1, …, until pull() "
                    "has given the model's tensor names: call pull() before pushing a list)",
                    status_code=error.status_code,
                    code=error.code,
                    response=error.response,
                ) from None
            raise

    def _secure_push(self, update: Weights, num_examples: int) -> SecurePush:
        if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
            raise TypeError(f"num_examples must be a whole number, not {num_examples!r}")
        self.wait_until_selected()
        return secure_push(self._transport, self.experiment, self.uuid, update, int(num_examples))

    def _as_update(self, weights: Weights, base_aggregate: int | None) -> Weights:
        """What the experiment takes: the weights, or (``update_kind`` delta) their change from
        the model they were trained from, which must be the one last pulled; with ``local_privacy``,
        the change clipped (and noised) first."""
        if self._update_kind != "delta" and self.local_privacy is None:
            return weights  # the server refuses weights where it expects deltas
        if self._base is None or base_aggregate not in (None, self._last_aggregate):  # pulled: kept
            what = "takes deltas (trained weights minus the model trained from)"
            if self._update_kind != "delta":
                what = "is pushed to with local_privacy, which clips the change from the model trained from"
            raise FmaClientError(
                f"experiment {self.experiment} {what}: pull() that model, train from it, then push "
                "without another base_aggregate"
            )
        mine = {name: np.shape(value) for name, value in weights.items()}
        pulled = {name: value.shape for name, value in self._base.items()}
        if list(mine.items()) != list(pulled.items()):
            raise ValidationError(f"the update's tensors {mine} are not the pulled model's {pulled}")
        change = {
            name: np.subtract(value, self._base[name], dtype=self._base[name].dtype)
            for name, value in weights.items()
        }
        if self.local_privacy is not None:
            change = self.local_privacy.protect(change)
            if self._update_kind != "delta":
                return {
                    name: np.add(self._base[name], value, dtype=self._base[name].dtype)
                    for name, value in change.items()
                }
        return change

    def push_file(
        self,
        path: str | os.PathLike,
        num_examples: int,
        metrics: Mapping[str, Any] | None = None,
        *,
        base_aggregate: int | None = None,
        idempotency_key: str | None = None,
        check_timeout: float = CHECK_TIMEOUT,
    ) -> Update:
        """Submit an update saved as a safetensors file, streamed from disk in parts (as ``push``).

        The file is sent as it is: for an experiment that takes deltas, it must hold the delta; with
        ``local_privacy`` it is refused (protect the change in memory and ``push`` it).
        """
        if self.local_privacy is not None:
            raise FmaClientError(
                "push_file sends a file as it is, unprotected: with local_privacy, use push()"
            )
        return self._upload(
            FileSource(path), num_examples, metrics, base_aggregate, idempotency_key, check_timeout
        )

    def _upload(
        self,
        source: Source,
        num_examples: int,
        metrics: Mapping[str, Any] | None,
        base_aggregate: int | None,
        idempotency_key: str | None,
        check_timeout: float,
    ) -> Update:
        if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
            raise TypeError(f"num_examples must be a whole number, not {num_examples!r}")
        base = base_aggregate if base_aggregate is not None else self._last_aggregate
        metadata = {
            "num_examples": int(num_examples),
            "base_aggregate": base,
            "metrics": metrics,
            "update_kind": self._update_kind or "weights",
        }
        upload = Upload(self._transport, self._path("uploads"), threads=self.threads)
        one_request = fits_one_request(source.size, metadata, self.single_request_bytes)
        body = read_all(source) if one_request else b""
        deadline = self._selection_deadline()
        while True:
            try:
                if one_request:
                    key = idempotency_key or uuid.uuid4().hex
                    update, _ = push_one_request(
                        self._transport, self._path("upload_update"), body, metadata, key
                    )
                    return Update(update)
                return Update(
                    upload.run(source, metadata, idempotency_key=idempotency_key, check_timeout=check_timeout)
                )
            except NotSelected as error:
                # Without a key of the caller's, each attempt has its own: an upload refused when it was
                # accepted (the round moved on while it was sent) keeps its key, rejected.
                self._wait_turn(deadline, error.retry_after, error.detail.partition(";")[0])

    def wait_for_new_model(
        self, after: int | None = None, timeout: float | None = None, *, poll_interval: float = 5.0
    ) -> Model:
        """Block until an aggregate newer than ``after`` exists, then pull it.

        ``after`` defaults to the aggregate of the last ``pull()`` (so any aggregate counts if
        nothing was pulled yet). ``timeout`` (seconds) raises ``WaitTimeout``; None waits forever.
        """
        after = after if after is not None else self._last_aggregate
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            aggregate = self.latest()
            if aggregate and (after is None or aggregate["id"] > after):
                return self._download(aggregate["result"], aggregate["id"], aggregate.get("update_kind"))
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"no aggregate newer than {after} in experiment {self.experiment} after {timeout} s; "
                    "the round may still be waiting for other clients' updates"
                )
            pause = poll_interval if deadline is None else min(poll_interval, deadline - time.monotonic())
            time.sleep(max(pause, 0.0))

    def report_evaluation(
        self, metrics: Mapping[str, float], num_examples: int, *, aggregate: int | None = None
    ) -> Evaluation:
        """Report this client's evaluation, on its own held-out data, of the model it last pulled (or
        of ``aggregate``): the experiment's declared metrics (``evaluation`` setting), e.g.
        ``{"accuracy": 0.91, "loss": 0.3}``, measured on ``num_examples`` examples, which weigh it
        when the server combines the evaluations of an aggregate. The server keeps one per client
        and aggregate: sending it again (a retry) returns the first; different results for an
        aggregate already evaluated raise ``ConflictError``.
        """
        if aggregate is None:
            aggregate = self._last_aggregate
            if aggregate is None:
                raise FmaClientError(
                    "nothing to evaluate: pull() an aggregate first (the initial model is not an "
                    "aggregate), or name one with aggregate="
                )
        return Evaluation(
            self._transport.json(
                "POST",
                self._path("evaluations"),
                json=evaluation_body(aggregate, metrics, num_examples),
                idempotent=True,  # one evaluation per client and aggregate: a retry returns the first
            )
        )

    def report_scores(self, aggregate: int, results: Any) -> Score:
        """Send this client's evaluation of an aggregate (any JSON the experiment's schema allows)."""
        body = {"aggregate": int(aggregate), "validation_results": results}
        # The server keeps one score per client and aggregate: a retry is safe.
        return Score(
            self._transport.json("POST", "api/v1/client_aggregate_scores/", json=body, idempotent=True)
        )

    def rotate_credential(self) -> str:
        """Replace this client's secret; the old token stops working at once. Save the new ``token``."""
        answer = self._transport.json("POST", "api/v1/clients/rotate_credential/", idempotent=False)
        self.token = answer["credential"]
        self._transport.authorization = f"Client {self.token}"
        return self.token
