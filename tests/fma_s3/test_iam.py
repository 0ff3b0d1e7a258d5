"""terraform_deploy's IAM policies grant each function every action its code needs, derived from
the calls the code makes: every boto3 operation the API and the aggregator perform in the S3 tests
(recorded by iam_calls.CallRecorder, including the operations behind the presigned URLs the API
signs), mapped through iam_calls.ACTIONS to IAM actions (with the KMS actions SSE-KMS needs), and
looked up in the functions' policy documents. This module runs after the other S3 tests
(conftest.py orders it last), whose calls it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hcl2
import pytest

from .iam_calls import ACTIONS, Call, CallRecorder

MODULES = Path(__file__).resolve().parents[2] / "terraform_deploy" / "modules"
# Each function's role: the shared access of modules/function and the function's own document.
POLICIES = {
    "api": (("function", "access"), ("api", "api")),
    "aggregator": (("function", "access"), ("aggregator", "aggregator")),
}
# The resource each kind of grant must name, as the modules write it.
RESOURCES = {
    "object": "${var.bucket_arn}/${var.s3_prefix}*",
    "bucket": "${var.bucket_arn}",
    "key": "${var.kms_key_arn}",
    "secret": "${var.secret_arns}",
}
INVOKED = {"api": "${var.aggregator_function_arn}", "aggregator": "${local.function_arn}"}


def unquote(value: Any) -> Any:
    return (
        value[1:-1] if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] == '"' else value
    )


def statements(module: str, document: str) -> list[dict[str, Any]]:
    found = []
    for path in (MODULES / module).glob("*.tf"):
        for block in hcl2.loads(path.read_text()).get("data", []):
            for body in (
                block.get('"aws_iam_policy_document"', {}).get(f'"{document}"', {}).get("statement", [])
            ):
                found.append(body)
    assert found, f"modules/{module} has no policy document {document}"
    return found


def grants(role: str) -> set[tuple[str, str]]:
    """(action, resource) pairs the role's Allow statements grant."""
    granted = set()
    for module, document in POLICIES[role]:
        for statement in statements(module, document):
            if unquote(statement.get("effect", '"Allow"')) != "Allow":
                continue
            resources = statement["resources"]
            resources = [resources] if isinstance(resources, str) else resources
            for action in statement["actions"]:
                granted |= {(unquote(action), unquote(resource)) for resource in resources}
    return granted


def needed(call: Call) -> list[tuple[str, str]]:
    assert (call.service, call.operation) in ACTIONS, (
        f"the {call.role} calls {call.service}:{call.operation}: add its IAM actions to iam_calls.ACTIONS"
    )
    return [
        (action, INVOKED[call.role] if kind == "function" else RESOURCES[kind])
        for action, kind in ACTIONS[(call.service, call.operation)]
    ]


def test_each_functions_policy_grants_every_action_its_calls_need(recorded_calls: CallRecorder):
    calls = recorded_calls.calls
    operations = {(c.role, c.operation, c.presigned) for c in calls}
    # the S3 tests ran before this one and exercised both functions' paths through S3
    expected = {
        ("api", "CreateMultipartUpload", False),
        ("api", "UploadPart", True),  # clients send the parts with URLs the API signed
        ("api", "GetObject", True),  # and download aggregates the same way
        ("aggregator", "PutObject", False),
        ("aggregator", "ListMultipartUploads", False),
    }
    if not expected <= operations:
        pytest.fail(
            f"recorded only {sorted(operations)}: run this module with the other S3 tests (tests/fma_s3)"
        )
    missing = [
        f"{call.role}: {call.service}:{call.operation}{' (presigned)' if call.presigned else ''} needs {action} on {resource}"
        for call in sorted(calls, key=lambda c: (c.role, c.service, c.operation))
        for action, resource in needed(call)
        if (action, resource) not in grants(call.role)
    ]
    assert missing == [], "\n".join(missing)


def test_the_check_finds_a_grant_taken_away():
    """The lookup is not vacuous: a role without s3:ListBucketMultipartUploads misses the sweep's call."""
    sweep = Call("aggregator", "s3", "ListMultipartUploads", presigned=False)
    assert set(needed(sweep)) <= grants("aggregator")
    assert not set(needed(sweep)) <= grants("api")  # the API never sweeps, and is not allowed to
    with pytest.raises(AssertionError, match="add its IAM actions"):
        needed(Call("api", "s3", "PutBucketPolicy", presigned=False))
