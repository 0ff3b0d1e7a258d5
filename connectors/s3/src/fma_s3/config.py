"""``S3WeightStore``'s options from ``FMA_S3_*`` environment variables (how deployments configure it).

| variable | option | default |
|---|---|---|
| ``FMA_S3_BUCKET`` | ``bucket`` | required |
| ``FMA_S3_PREFIX`` | ``prefix`` | none: keys at the bucket's root |
| ``FMA_S3_REGION`` | ``region`` | boto3's (``AWS_REGION``, the profile) |
| ``FMA_S3_ENDPOINT_URL`` | ``endpoint_url`` | AWS; set it for an S3-compatible server |
| ``FMA_S3_ADDRESSING_STYLE`` | ``addressing_style`` | ``auto``; ``path`` for most S3-compatible servers |
| ``FMA_S3_ENCRYPTION`` | ``encryption``: ``AES256``, ``aws:kms`` or ``none`` | ``AES256`` (S3-managed keys) |
| ``FMA_S3_KMS_KEY_ID`` | ``encryption="aws:kms"``, ``kms_key_id`` | none |
| ``FMA_S3_PART_SIZE`` | ``part_size``, in bytes | 16 MiB |
| ``FMA_S3_READ_AHEAD_BYTES`` | ``read_ahead_bytes``: memory for GETs ahead of the reads, 0 for none | 128 MiB |
| ``FMA_S3_READ_CONCURRENCY`` | ``read_concurrency``: GETs the read-ahead keeps in flight at most | 8 |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fma_core.errors import ConfigurationError

_TEXT_OPTIONS = {
    "FMA_S3_PREFIX": "prefix",
    "FMA_S3_REGION": "region",
    "FMA_S3_ENDPOINT_URL": "endpoint_url",
    "FMA_S3_ADDRESSING_STYLE": "addressing_style",
    "FMA_S3_ENCRYPTION": "encryption",
}

_WHOLE_OPTIONS = {
    "FMA_S3_PART_SIZE": "part_size",
    "FMA_S3_READ_AHEAD_BYTES": "read_ahead_bytes",
    "FMA_S3_READ_CONCURRENCY": "read_concurrency",
}


def options_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of ``S3WeightStore``; variables left empty take the defaults."""
    bucket = environ.get("FMA_S3_BUCKET", "").strip()
    if not bucket:
        raise ConfigurationError("FMA_S3_BUCKET is not set: name the bucket that holds the weights")
    options: dict[str, Any] = {"bucket": bucket}
    for variable, option in _TEXT_OPTIONS.items():
        if value := environ.get(variable, "").strip():
            options[option] = value
    if kms_key_id := environ.get("FMA_S3_KMS_KEY_ID", "").strip():
        options.update(encryption=options.get("encryption", "aws:kms"), kms_key_id=kms_key_id)
    for variable, option in _WHOLE_OPTIONS.items():
        if value := environ.get(variable, "").strip():
            try:
                options[option] = int(value)
            except ValueError:
                raise ConfigurationError(f"{variable} must be a whole number, not {value!r}") from None
    return options
