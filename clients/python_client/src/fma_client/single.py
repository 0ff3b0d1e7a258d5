"""Pushing a small update in one request: the safetensors body, its metadata in headers.

An upload session costs three requests (start, part, complete), each a transaction; for an update
of a few megabytes that is most of a push's time. The service's one-request form
(``models/{id}/upload_update/``) runs the same checks and ends in the same acceptance, so a small
update loses nothing by it: the idempotency key (a retry, or a push again with the key an error
named, returns the first update), the declared size (Content-Length) and SHA-256 (checked against
the bytes received), the tensor spec and the finite values. There is nothing to resume in one
request: a broken one is sent again whole, under the same key.

``Client`` picks this form by size (``SINGLE_REQUEST_BYTES``), so its users never choose.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fma_client.errors import CheckTimeout, ServerUnavailable, TransferError
from fma_client.transport import Transport
from fma_client.uploads import naming

# Above this the push goes through an upload session. API Gateway hands a binary body to Lambda in
# base64 (4/3 larger): 4 MiB becomes 5.6 MB, under Lambda's 6 MB request payload, so every
# deployment takes it in one request; 1M float32 (4 MB) still goes in one.
SINGLE_REQUEST_BYTES = 4 * 1024 * 1024
# Metrics travel in a header; a proxy or h11 (16 KiB for all headers) refuses much more.
_MAX_METRICS_HEADER = 8 * 1024


def metrics_header(metrics: Any) -> str | None:
    """The metrics as the compact JSON header value, or None if they are too long for a header."""
    text = json.dumps(metrics, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text if len(text) <= _MAX_METRICS_HEADER else None


def fits_one_request(size: int, metadata: dict[str, Any], limit: int = SINGLE_REQUEST_BYTES) -> bool:
    """Whether an update of ``size`` bytes with this metadata goes in one request."""
    if size > limit:
        return False
    try:
        return metadata.get("metrics") is None or metrics_header(metadata["metrics"]) is not None
    except ValueError:  # NaN or infinity: the session path sends them as JSON and the server refuses them
        return False


def push_one_request(
    transport: Transport, path: str, body: bytes, metadata: dict[str, Any], key: str
) -> tuple[dict[str, Any], bool]:
    """POST ``body`` with ``metadata`` under idempotency ``key`` to ``path`` (``…/upload_update/``):
    ``(the accepted update, whether this request created it)``. Retried as the transport retries
    idempotent requests: the key makes a repeat return the first update."""
    headers = {
        "Content-Type": "application/octet-stream",
        "Idempotency-Key": key,
        "X-FMA-Num-Examples": str(metadata["num_examples"]),
        "X-FMA-Update-Kind": metadata.get("update_kind") or "weights",
        "X-FMA-SHA256": hashlib.sha256(body).hexdigest(),
    }
    if metadata.get("base_aggregate") is not None:
        headers["X-FMA-Base-Aggregate"] = str(metadata["base_aggregate"])
    if metadata.get("metrics") is not None:
        headers["X-FMA-Metrics"] = metrics_header(metadata["metrics"])
    try:
        response = transport.request("POST", path, body=body, headers=headers, idempotent=True)
    except (ServerUnavailable, TransferError, CheckTimeout) as error:
        raise naming(error, key) from error
    return response.json(), response.status_code == 201
