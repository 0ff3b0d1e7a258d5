"""``WebClient``: the original fma-connect 0.0.2 API, so a script moves over by changing one import.

    from fma_client import WebClient      # was: from fma_connect import WebClient

Same constructor, methods and return shapes, on this package's transport (one session, retries,
TLS options, typed errors whose ``status_code`` matches the original ``APIException``'s). What
changed: URLs are joined properly (not with ``os.path.join``), non-JSON error bodies raise a
typed error instead of a JSONDecodeError, ``update_after`` given before any aggregate was seen no
longer raises TypeError, and updates carry an idempotency key so a retry never counts twice.

By default it talks the legacy protocol (the ``CLIENT-UUID`` header, for experiments in legacy
mode). Pass ``enrollment_token=`` (or ``token=``, a saved credential) to use a real credential.
"""

from __future__ import annotations

import uuid as uuid_module
from typing import Any

from fma_client.transport import Retry, Transport

DEFAULT_URL = "http://127.0.0.1:8000/"


class WebClient:
    """A data holder in one experiment ("federated model"), as fma-connect's ``WebClient``."""

    def __init__(
        self,
        federated_model_id: int,
        uuid: str | None = None,
        url: str | None = None,
        *,
        token: str | None = None,
        enrollment_token: str | None = None,
        timeout: float | tuple[float, float] = 10.0,
        retry: Retry | None = None,
        verify: bool | str = True,
    ) -> None:
        self._federated_model_id = federated_model_id
        self._url = url or DEFAULT_URL
        self._token = token
        self._uuid = uuid if uuid is not None else (token.partition(".")[0] if token else None)
        self._enrollment_token = enrollment_token
        self._is_registered = False
        self._last_model_aggregate: int | None = None
        self._transport = Transport(self._url, timeout=timeout, retry=retry, verify=verify, quiet=True)

    @property
    def url(self) -> str:
        return self._url

    @property
    def federated_model_id(self) -> int:
        return self._federated_model_id

    @property
    def uuid(self) -> str:
        """This client's UUID, registering first if none is known yet (as in the original)."""
        self._ensure_registered()
        return self._uuid

    def _ensure_registered(self) -> None:
        """Register before the first call that needs an identity (the original sent it anonymously)."""
        if self._uuid is None:
            self.register()

    def _auth(self) -> dict[str, str]:
        if self._token:
            return {"Authorization": f"Client {self._token}"}
        return {"CLIENT-UUID": self._uuid} if self._uuid else {}

    def _model_path(self, action: str) -> str:
        return f"api/v1/models/{self._federated_model_id}/{action}/"

    def register(self) -> str:
        """Enroll in the experiment (as a known client if a UUID is set) and return the UUID."""
        body = {"enrollment_token": self._enrollment_token} if self._enrollment_token else {}
        answer = self._transport.json(
            "POST", self._model_path("register_client"), json=body, headers=self._auth(), idempotent=False
        )
        self._uuid = answer["uuid"]
        if answer.get("credential"):
            self._token = answer["credential"]
        self._is_registered = True
        return self._uuid

    def send_update(self, data: Any, base_aggregate: int | None = None) -> dict[str, Any]:
        """Submit ``data`` (a list of layers, each a nested list of numbers); returns the stored update."""
        self._ensure_registered()
        return self._transport.json(
            "POST",
            "api/v1/model_updates/",
            json={
                "federated_model": self._federated_model_id,
                "data": data,
                "base_aggregate": base_aggregate,
                "idempotency_key": uuid_module.uuid4().hex,
            },
            headers=self._auth(),
            idempotent=True,
        )

    def _newer(self, aggregate_id: int, update_after: int | None) -> bool:
        seen = [v for v in (update_after, self._last_model_aggregate) if v is not None]
        if seen and aggregate_id <= max(seen):
            return False
        self._last_model_aggregate = aggregate_id
        return True

    def check_for_new_model_aggregate(self, update_after: int | None = None) -> dict[str, Any] | None:
        """The newest aggregate's metadata if it is newer than ``update_after`` and than the last seen; else None."""
        self._ensure_registered()
        aggregate = self._transport.json(
            "GET", self._model_path("get_latest_aggregate"), headers=self._auth()
        )
        if not aggregate or not self._newer(aggregate["id"], update_after):
            return None
        return aggregate

    def check_for_latest_model(self, update_after: int | None = None) -> dict[str, Any] | None:
        """``{"values": layers, "aggregate": id}`` if newer than what was seen; the initial model counts as id −1."""
        self._ensure_registered()
        model = self._transport.json("GET", self._model_path("get_latest_model"), headers=self._auth())
        if not model:
            return None
        aggregate = model.get("aggregate")
        if not self._newer(aggregate if aggregate is not None else -1, update_after):
            return None
        return model

    def get_current_artifact(self) -> dict[str, Any]:
        """The published artifact's metadata (``{}`` if none)."""
        self._ensure_registered()
        return self._transport.json("GET", self._model_path("get_current_artifact"), headers=self._auth())

    def send_val_results(self, results: Any, aggregate_id: int) -> dict[str, Any]:
        """Send this client's evaluation of an aggregate; returns the stored score."""
        return self._transport.json(
            "POST",
            "api/v1/client_aggregate_scores/",
            json={
                "validation_results": results,
                "federated_model": self._federated_model_id,
                "aggregate": aggregate_id,
                "client": self.uuid,
            },
            headers=self._auth(),
            idempotent=False,
        )
