"""What S3's error answers mean to FMA."""

from __future__ import annotations

from botocore.exceptions import ClientError

_MISSING = frozenset({"NoSuchKey", "NoSuchUpload", "404", "NotFound"})


def error_code(error: ClientError) -> str:
    """S3's error code (``NoSuchKey``), or the HTTP status for answers without a body (HEAD)."""
    return str(error.response.get("Error", {}).get("Code", ""))


def is_missing(error: ClientError) -> bool:
    """The object or the multipart upload does not exist (or no longer does)."""
    return error_code(error) in _MISSING
