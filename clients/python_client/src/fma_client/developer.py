"""``Developer``: run experiments from Python — what the ``fma`` command is built on.

An experiment is defined by a mapping (or a YAML/JSON file) with the server's fields —
``name``, ``aggregator``, ``aggregator_params``, ``round_policy``, ``tensor_spec``,
``update_schema``, ``client_agg_results_schema``, ``evaluation`` (the metrics measured on held-out
data and their goals), ``max_update_bytes``, ``update_kind``
(``weights`` or ``delta``), ``update_norm`` (``{mode: clip, bound: 5.0}``, see the server's
``fma_core.norms``), … — plus two conveniences: ``initial_model`` may be a path to a safetensors file, and ``enrollment`` is ``token`` (the
default: clients need an enrollment token), ``open`` or ``legacy`` (fma-connect's CLIENT-UUID).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fma_client.errors import FmaClientError, NotFound, ValidationError
from fma_client.results import (
    Aggregate,
    AggregateDetail,
    ApiToken,
    Artifact,
    EnrollmentToken,
    Evaluation,
    Experiment,
    IssuedEnrollmentToken,
    RoundMetrics,
    Update,
    evaluation_body,
    many,
)
from fma_client.transport import Retry, Transport
from fma_client.weights import read_file

ENROLLMENT_MODES = {
    "token": {"open_enrollment": False, "legacy_mode": False},
    "open": {"open_enrollment": True, "legacy_mode": False},
    "legacy": {"open_enrollment": False, "legacy_mode": True},
}


def load_definition(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """An experiment definition from a mapping or a ``.yaml``/``.yml``/``.json`` file.

    A relative ``initial_model`` path in a file is taken relative to that file's folder.
    """
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    text = path.read_text()
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml  # only the CLI's YAML files need it

        definition = yaml.safe_load(text)
    else:
        definition = json.loads(text)
    if not isinstance(definition, dict):
        raise ValidationError(
            f"{path} must hold a mapping of experiment fields, not a {type(definition).__name__}"
        )
    model = definition.get("initial_model")
    if isinstance(model, str) and not Path(model).is_absolute():
        definition["initial_model"] = str(path.parent / model)
    return definition


def to_request(definition: Mapping[str, Any]) -> dict[str, Any]:
    """The ``POST models/`` body for a definition: enrollment mode expanded, a model file read.

    The API takes an initial model as JSON (a list of layers), so a safetensors file is sent as
    its layers plus the tensor spec (names, dtypes, shapes) that makes the server rebuild it
    exactly.
    """
    body = dict(definition)
    mode = body.pop("enrollment", None)
    if mode is not None:
        if mode not in ENROLLMENT_MODES:
            raise ValidationError(f"enrollment must be one of {', '.join(ENROLLMENT_MODES)}, not {mode!r}")
        body.update(ENROLLMENT_MODES[mode])
    model = body.get("initial_model")
    if isinstance(model, str | os.PathLike):
        if not Path(model).is_file():
            raise ValidationError(f"initial_model: no file {model}")
        weights = read_file(model)
        body["initial_model"] = [array.tolist() for array in weights.values()]
        spec = [{"name": n, "dtype": _code(a), "shape": list(a.shape)} for n, a in weights.items()]
        if body.get("tensor_spec") is None:
            body["tensor_spec"] = spec
    return body


def _code(array: Any) -> str:
    kind = {"f": "F", "i": "I", "u": "U"}[array.dtype.kind]
    return f"{kind}{array.dtype.itemsize * 8}"


class Developer:
    """A developer's session with one FMA service, authenticated by an API token.

    Get a token with ``Developer.login(url, username, password)`` (or ``fma login``). Tokens expire
    (the service's ``FMA_TOKEN_TTL_DAYS``); a call with an expired one raises ``TokenExpired``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        retry: Retry | None = None,
        verify: bool | str = True,
        quiet: bool = False,
    ) -> None:
        self.token = token
        self._transport = Transport(
            url, authorization=f"Token {token}", timeout=timeout, retry=retry, verify=verify, quiet=quiet
        )

    @classmethod
    def login(cls, url: str, username: str, password: str, *, name: str = "", **options: Any) -> Developer:
        """Exchange a username and password for a new API token (``name`` labels it in ``api_tokens()``)."""
        transport = Transport(url, **options)
        body = {"username": username, "password": password, **({"name": name} if name else {})}
        try:
            answer = transport.json("POST", "api-token-auth/", json=body, idempotent=True)
        except ValidationError as error:  # DRF answers bad credentials with a 400
            raise type(error)(
                f"{error.detail}; check the username and password", status_code=error.status_code
            ) from None
        finally:
            transport.close()
        return cls(url, token=answer["token"], **options)

    @property
    def url(self) -> str:
        return self._transport.url

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Developer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # API tokens

    def api_tokens(self) -> list[ApiToken]:
        """Your API tokens, newest first: name, created, expiry, last use, and which one this session uses."""
        return many(ApiToken, self._transport.pages("api/v1/tokens/"))

    def revoke_api_token(self, token_id: int) -> None:
        """Revoke one of your API tokens (e.g. one that leaked); it stops working at once."""
        self._transport.request("DELETE", f"api/v1/tokens/{int(token_id)}/", idempotent=True)

    # Experiments

    def create_experiment(self, definition: str | os.PathLike | Mapping[str, Any]) -> Experiment:
        """Create an experiment from a definition (mapping or YAML/JSON file); returns it."""
        body = to_request(load_definition(definition))
        return Experiment(self._transport.json("POST", "api/v1/models/", json=body, idempotent=False))

    def experiments(self, **filters: Any) -> list[Experiment]:
        """Your experiments, newest first; filters as the API's (``name=`` matches a part)."""
        return many(Experiment, self._transport.pages("api/v1/models/", filters))

    def experiment(self, experiment: int) -> Experiment:
        return Experiment(self._transport.json("GET", f"api/v1/models/{int(experiment)}/"))

    def update_experiment(self, experiment: int, **changes: Any) -> Experiment:
        """Change settings, e.g. ``allow_aggregation=False`` to pause rounds."""
        return Experiment(
            self._transport.json("PATCH", f"api/v1/models/{int(experiment)}/", json=changes, idempotent=True)
        )

    def set_state(self, experiment: int, state: str, *, reason: str = "") -> Experiment:
        """Move the experiment through its lifecycle: ``"paused"``, ``"collecting"`` (resume) or
        ``"stopped"`` (for good); raises ``ConflictError`` when its state does not allow it."""
        body = {"state": state, "reason": reason}
        return Experiment(
            self._transport.json(
                "POST", f"api/v1/models/{int(experiment)}/state/", json=body, idempotent=True
            )
        )

    def pause(self, experiment: int, *, reason: str = "") -> Experiment:
        """No more rounds until resumed; updates are still accepted."""
        return self.set_state(experiment, "paused", reason=reason)

    def resume(self, experiment: int, *, reason: str = "") -> Experiment:
        """Rounds again (a finished experiment only once its ``finish_when`` no longer holds)."""
        return self.set_state(experiment, "collecting", reason=reason)

    def stop(self, experiment: int, *, reason: str = "") -> Experiment:
        """End the experiment for good: no more updates or rounds; its models stay downloadable."""
        return self.set_state(experiment, "stopped", reason=reason)

    def check_new_experiment(self, definition: str | os.PathLike | Mapping[str, Any]) -> None:
        """Ask the service whether it would create this experiment, storing nothing (its
        ``dry_run``); raises the refusal it would give, e.g. ``ConflictError`` for a taken name."""
        body = to_request(load_definition(definition))
        self._transport.request(
            "POST", "api/v1/models/", json=body, params={"dry_run": "true"}, idempotent=True
        )

    def check_experiment_change(self, experiment: int, **changes: Any) -> dict[str, Any]:
        """The experiment as these changes would leave it, storing nothing (the service's ``dry_run``);
        raises the refusal the change would get, e.g. ``ConflictError`` for what a running
        experiment cannot take."""
        return self._transport.json(
            "PATCH",
            f"api/v1/models/{int(experiment)}/",
            json=changes,
            params={"dry_run": "true"},
            idempotent=True,
        )

    # Clients

    def issue_enrollment_token(
        self, experiment: int, *, expires_in: float | None = None, max_uses: int | None = None
    ) -> IssuedEnrollmentToken:
        """A new enrollment token for the experiment: ``token`` is the secret to hand to a data
        holder (shown only now), ``id`` names it to ``revoke_enrollment_token`` later."""
        body: dict[str, Any] = {}
        if expires_in is not None:
            body["expires_in_seconds"] = int(expires_in)
        if max_uses is not None:
            body["max_uses"] = int(max_uses)
        return IssuedEnrollmentToken(
            self._transport.json(
                "POST", f"api/v1/models/{int(experiment)}/enrollment_tokens/", json=body, idempotent=False
            )
        )

    def enrollment_tokens(self, experiment: int) -> list[EnrollmentToken]:
        """The experiment's enrollment tokens, newest first: uses, limits, whether still active (never the secret)."""
        return many(
            EnrollmentToken,
            self._transport.json("GET", f"api/v1/models/{int(experiment)}/enrollment_tokens/"),
        )

    def revoke_enrollment_token(self, experiment: int, token_id: int) -> EnrollmentToken:
        """Stop a (leaked) enrollment token from enrolling anyone else; enrolled clients stay."""
        path = f"api/v1/models/{int(experiment)}/enrollment_tokens/{int(token_id)}/"
        return EnrollmentToken(self._transport.json("DELETE", path, idempotent=True))

    def revoke(self, experiment: int, client: str) -> None:
        """Shut a client (its UUID) out of the experiment; its credential stops working there."""
        self._transport.json(
            "POST",
            f"api/v1/models/{int(experiment)}/revoke_client/",
            json={"client": client},
            idempotent=True,
        )

    # Rounds and their results

    def updates(self, experiment: int, *, status: str | None = None) -> list[Update]:
        params: dict[str, Any] = {"federated_model": int(experiment)}
        if status:
            params["status"] = status
        return many(Update, self._transport.pages("api/v1/model_updates/", params))

    def aggregates(self, experiment: int) -> list[Aggregate]:
        """The experiment's aggregates, newest round first."""
        params = {"federated_model": int(experiment)}
        return many(Aggregate, self._transport.pages("api/v1/model_aggregates/", params))

    def aggregate(self, aggregate: int) -> AggregateDetail:
        """One aggregate, with the updates that went into it and its evaluations combined (``evaluation``)."""
        return AggregateDetail(self._transport.json("GET", f"api/v1/model_aggregates/{int(aggregate)}/"))

    def metrics(self, experiment: int) -> list[RoundMetrics]:
        """Per aggregate, oldest first, the clients' reported metrics combined by the server.

        Each item has ``aggregate``, ``round_number``, ``training`` (the metrics pushed with the
        round's updates) and ``evaluation`` (its evaluations on held-out data); each of those
        maps a metric name to ``count``, ``examples``, ``mean``, ``weighted_mean`` (by examples),
        ``min`` and ``max``.
        """
        return many(RoundMetrics, self._transport.json("GET", f"api/v1/models/{int(experiment)}/metrics/"))

    def report_evaluation(
        self, experiment: int, aggregate: int, metrics: Mapping[str, float], num_examples: int
    ) -> Evaluation:
        """Report your own evaluator's measure of an aggregate on held-out data (e.g. a central test
        set): the experiment's declared metrics, measured on ``num_examples`` examples. It counts in
        the aggregate's combined figure beside the clients' evaluations, weighted by its examples. One
        per developer and aggregate: a retry returns the first, other results raise ``ConflictError``."""
        path = f"api/v1/models/{int(experiment)}/evaluations/"
        body = evaluation_body(aggregate, metrics, num_examples)
        return Evaluation(self._transport.json("POST", path, json=body, idempotent=True))

    def evaluations(
        self,
        experiment: int,
        *,
        aggregate: int | None = None,
        source: str | None = None,
        after: int | None = None,
    ) -> list[Evaluation]:
        """The evaluations of the experiment's aggregates, newest first (of one ``aggregate``, from one
        ``source``: ``client`` or ``developer``, or only those reported ``after`` this evaluation id)."""
        wanted = {"aggregate": aggregate, "source": source, "after": after}
        params = {k: v for k, v in wanted.items() if v is not None}
        return many(
            Evaluation, self._transport.pages(f"api/v1/models/{int(experiment)}/evaluations/", params)
        )

    def watch(
        self, experiment: int, *, poll_interval: float = 5.0, after: int | None = None
    ) -> Iterator[Aggregate]:
        """Yield each new aggregate as its round completes (oldest first), forever.

        ``after`` is the last aggregate id already known; by default only rounds that complete
        from now on are yielded.
        """
        params = {"federated_model": int(experiment)}  # the API lists the newest round first
        if after is None:
            newest = next(
                iter(self._transport.pages("api/v1/model_aggregates/", {**params, "page_size": 1})), None
            )
            after = newest["id"] if newest else 0
        while True:
            fresh = []
            for aggregate in self._transport.pages("api/v1/model_aggregates/", params):
                if aggregate["id"] <= after:
                    break  # newest first: the rest were seen already, so later pages are never fetched
                fresh.append(aggregate)
            for aggregate in reversed(fresh):
                after = aggregate["id"]
                yield Aggregate(aggregate)
            time.sleep(poll_interval)

    def publish(self, aggregate: int, version: str) -> Artifact:
        """Publish an aggregate as the experiment's current artifact under ``version``."""
        path = f"api/v1/model_aggregates/{int(aggregate)}/publish_aggregate/"
        return Artifact(self._transport.json("POST", path, json={"version": version}, idempotent=False))

    def artifacts(self, experiment: int) -> list[Artifact]:
        """The experiment's published versions, newest first."""
        return [
            Artifact(a)
            for a in self._transport.pages("api/v1/model_artifacts/")
            if a["federated_model"] == int(experiment)
        ]

    def download(
        self,
        experiment: int,
        destination: str | os.PathLike,
        *,
        aggregate: int | None = None,
        version: str | None = None,
    ) -> Path:
        """Save weights as a safetensors file: an aggregate, a published version, or else the latest model."""
        if aggregate is not None and version is not None:
            raise ValueError("give an aggregate or a version, not both")
        if aggregate is not None:
            link = self.aggregate(aggregate)["result"]
            what = f"aggregate {aggregate}"
        elif version is not None:
            match = [a for a in self.artifacts(experiment) if a["version"] == version]
            if not match:
                raise NotFound(f"experiment {experiment} has no published version {version!r}")
            link, what = match[0]["values"], f"version {version}"
        else:
            link, what = f"api/v1/models/{int(experiment)}/latest_weights/", "latest model"
        try:
            return self._transport.download(link, destination, what=what)
        except FmaClientError:
            Path(destination).unlink(missing_ok=True)
            raise
