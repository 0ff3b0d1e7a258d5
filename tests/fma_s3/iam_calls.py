"""The AWS calls the API's and the aggregator's code make in the S3 tests, and the IAM actions each
needs, to hold terraform_deploy's policies to what the code really does (test_iam.py).

``CallRecorder`` joins every botocore session made while it is installed (botocore registers its
``BUILTIN_HANDLERS`` in each new session; the store makes a session of its own) and hears
``provide-client-params``, which botocore emits for each operation a client calls *and* for each
URL it presigns: a presigned URL carries its signer's permissions, so the API's role needs the
actions of the uploads and downloads it signs but never sends itself.

Each call is put down to the role that makes it on AWS by the code on its stack (``ROLES``): the
round engine, the sweep and the aggregator's entry points run in the aggregator function, Django's
request handling in the API function. Calls no role's code is on the stack of (the tests' own
look at the bucket, the store's tests driving the store directly) are left out.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import botocore.handlers

# The module prefixes on a call's stack that say which function makes it on AWS, outermost first.
ROLES = (
    ("fma_aggregator.", "aggregator"),
    ("fma_django.housekeeping", "aggregator"),
    ("fma_core.rounds", "aggregator"),
    ("django.core.handlers.", "api"),
    ("fma_django.api.", "api"),
)

# What IAM checks for each operation, on which kind of resource. Objects of the weights bucket are
# encrypted with the deployment's KMS key (the bucket's default and FMA_S3_KMS_KEY_ID), so writing
# one asks KMS for a data key and reading one asks it to decrypt; a multipart upload needs both
# (S3 decrypts the parts' data key to join them).
ACTIONS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("s3", "GetObject"): (("s3:GetObject", "object"), ("kms:Decrypt", "key")),
    # HEAD of a missing key answers 404 rather than 403 only to a role that may list the bucket
    ("s3", "HeadObject"): (("s3:GetObject", "object"), ("s3:ListBucket", "bucket")),
    ("s3", "PutObject"): (("s3:PutObject", "object"), ("kms:GenerateDataKey", "key")),
    ("s3", "CreateMultipartUpload"): (
        ("s3:PutObject", "object"),
        ("kms:GenerateDataKey", "key"),
        ("kms:Decrypt", "key"),
    ),
    ("s3", "UploadPart"): (
        ("s3:PutObject", "object"),
        ("kms:GenerateDataKey", "key"),
        ("kms:Decrypt", "key"),
    ),
    ("s3", "CompleteMultipartUpload"): (("s3:PutObject", "object"), ("kms:Decrypt", "key")),
    ("s3", "AbortMultipartUpload"): (("s3:AbortMultipartUpload", "object"),),
    ("s3", "ListParts"): (("s3:ListMultipartUploadParts", "object"),),
    ("s3", "ListMultipartUploads"): (("s3:ListBucketMultipartUploads", "bucket"),),
    ("s3", "ListObjectsV2"): (("s3:ListBucket", "bucket"),),
    ("s3", "DeleteObject"): (("s3:DeleteObject", "object"),),
    ("s3", "DeleteObjects"): (("s3:DeleteObject", "object"),),
    ("secretsmanager", "GetSecretValue"): (
        ("secretsmanager:GetSecretValue", "secret"),
        ("kms:Decrypt", "key"),
    ),
    ("lambda", "Invoke"): (("lambda:InvokeFunction", "function"),),
}


@dataclass(frozen=True)
class Call:
    role: str
    service: str
    operation: str
    presigned: bool


@dataclass
class CallRecorder:
    calls: set[Call] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> None:
        botocore.handlers.BUILTIN_HANDLERS.append(("provide-client-params", self._record))

    def uninstall(self) -> None:
        botocore.handlers.BUILTIN_HANDLERS.remove(("provide-client-params", self._record))

    def _record(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        role = role_on_stack()
        if role is None:
            return
        call = Call(
            role, model.service_model.service_name, model.name, bool(context.get("is_presign_request"))
        )
        with self._lock:
            self.calls.add(call)


def role_on_stack() -> str | None:
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(frame.f_globals.get("__name__", ""))
        frame = frame.f_back
    for module in reversed(frames):  # outermost first: who started the work
        for prefix, role in ROLES:
            if module.startswith(prefix):
                return role
    return None
