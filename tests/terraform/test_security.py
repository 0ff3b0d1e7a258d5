"""Security properties of terraform_deploy/, checked on the parsed configuration, each with a
small bad fixture proving the checker can fail."""

import pytest

from .hcl_config import TERRAFORM_DIR, blocks, load_tree, parse_text, references, unquote
from .security_rules import (
    all_problems,
    bucket_problems,
    database_problems,
    environment_keys,
    iam_wildcard_problems,
    lambda_problems,
    log_group_problems,
    open_ingress_problems,
    scoped_access_problems,
)

TREE = load_tree()
ROOT = TREE[TERRAFORM_DIR]
MODULES = {path.name: module for path, module in TREE.items()}


@pytest.mark.parametrize("path", sorted(TREE), ids=lambda p: p.name)
def test_module_has_no_security_problem(path):
    assert all_problems(TREE[path]) == []


def test_the_checked_resources_exist():
    """The checkers pass vacuously on a module without the resource; make sure they did not."""
    assert MODULES["function"].resources_of("aws_lambda_function")
    assert MODULES["weights_bucket"].resources_of("aws_s3_bucket")
    assert MODULES["database"].resources_of("aws_db_instance")
    assert MODULES["network"].resources_of("aws_vpc_security_group_ingress_rule")
    assert MODULES["api"].data_of("aws_iam_policy_document")
    assert MODULES["aggregator"].data_of("aws_iam_policy_document")


@pytest.mark.parametrize("name", ["function", "api", "aggregator"])
def test_function_policies_aim_each_service_at_its_one_resource(name):
    assert MODULES[name].data_of("aws_iam_policy_document")
    assert scoped_access_problems(MODULES[name]) == []


def test_only_the_api_and_the_aggregator_itself_may_invoke_the_aggregator():
    """The API asks for rounds and checks; the aggregator's sweep, sharded rounds and checks ask too."""

    def invoke_statements(module):
        return [
            s
            for d in module.data_of("aws_iam_policy_document").values()
            for s in blocks(d, "statement")
            if '"lambda:InvokeFunction"' in s.get("actions", [])
        ]

    (statement,) = invoke_statements(MODULES["api"])
    assert statement["resources"] == ["${var.aggregator_function_arn}"]
    (itself,) = invoke_statements(MODULES["aggregator"])
    assert itself["resources"] == ["${local.function_arn}"]
    arn = unquote(MODULES["aggregator"].locals["function_arn"])
    assert arn.endswith(":function:${var.function_name}")
    assert ":lambda:${var.region}:" in arn


def object_actions(module):
    return {
        unquote(action)
        for document in module.data_of("aws_iam_policy_document").values()
        for statement in blocks(document, "statement")
        for action in statement.get("actions", [])
        if unquote(action).startswith("s3:")
    }


def test_functions_may_do_the_multipart_calls_their_code_makes():
    """The API starts, lists and aborts presigned multipart uploads; the aggregator's sweep aborts
    abandoned ones and its multipart writes abort on failure (CreateMultipartUpload, UploadPart and
    CompleteMultipartUpload are authorised by s3:PutObject)."""
    assert {"s3:PutObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"} <= object_actions(
        MODULES["api"]
    )
    assert {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"} <= object_actions(
        MODULES["aggregator"]
    )


def s3_grants(module) -> dict[str, set[str]]:
    """Each S3 action the module's policy documents grant, with the resources it is granted on."""
    grants: dict[str, set[str]] = {}
    for document in module.data_of("aws_iam_policy_document").values():
        for statement in blocks(document, "statement"):
            for action in statement.get("actions", []):
                if unquote(action).startswith("s3:"):
                    grants.setdefault(unquote(action), set()).update(map(unquote, statement["resources"]))
    return grants


def test_the_aggregators_sweep_may_find_and_remove_what_no_record_references():
    """The sweep (the aggregator function's scheduled event) lists FMA's objects and its unfinished
    multipart uploads (bucket actions, on the bucket), measures an abandoned upload's parts, deletes
    orphaned objects and aborts abandoned uploads: object actions, only under FMA's prefix. Sharded
    rounds and upload checks list an upload's parts too."""
    bucket, objects = "${var.bucket_arn}", "${var.bucket_arn}/${var.s3_prefix}*"
    aggregator, shared = s3_grants(MODULES["aggregator"]), s3_grants(MODULES["function"])
    assert shared["s3:ListBucket"] == {bucket}
    assert aggregator["s3:ListBucketMultipartUploads"] == {bucket}
    for action in ("s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"):
        assert aggregator[action] == {objects}, action


def test_database_defaults_keep_it_safe():
    assert ROOT.variables["db_deletion_protection"]["default"] is True
    assert ROOT.variables["db_backup_retention_days"]["default"] >= 7


def test_network_is_private_across_two_zones_with_the_endpoints_the_functions_need():
    network = MODULES["network"]
    for subnet in network.resources_of("aws_subnet").values():
        assert subnet["map_public_ip_on_launch"] is False
    assert not network.resources_of("aws_internet_gateway")
    assert ROOT.variables["az_count"]["default"] >= 2
    gateway = network.resources_of("aws_vpc_endpoint")["s3"]
    assert unquote(gateway["vpc_endpoint_type"]) == "Gateway"
    # which interface endpoints: test_operations.py, from the clients the code creates


def test_weights_bucket_lifecycle_and_cors():
    bucket = MODULES["weights_bucket"]
    lifecycle = bucket.resources_of("aws_s3_bucket_lifecycle_configuration")["this"]
    rules = blocks(lifecycle, "rule")
    assert any(
        unquote(f.get("prefix", "")).endswith("updates/") and blocks(r, "expiration")
        for r in rules
        for f in blocks(r, "filter")
    )
    assert any(blocks(r, "abort_incomplete_multipart_upload") for r in rules)
    (cors,) = bucket.resources_of("aws_s3_bucket_cors_configuration").values()
    (rule,) = blocks(cors, "cors_rule")
    assert {unquote(m) for m in rule["allowed_methods"]} >= {"PUT", "GET"}
    assert [unquote(h) for h in rule["expose_headers"]] == ["ETag"]


def test_functions_receive_the_settings_the_code_reads():
    common = environment_keys(ROOT.locals["common_environment"])
    needed = {
        "FMA_DATABASE_SECRET_ARN",
        "FMA_DATABASE_HOST",
        "FMA_DATABASE_PORT",
        "FMA_DATABASE_NAME",
        "FMA_DATABASE_CA_FILE",
        "FMA_SECRET_KEY_SECRET_ARN",
        "FMA_WEIGHT_STORE",
        "FMA_S3_BUCKET",
        "FMA_S3_PREFIX",
        "FMA_S3_KMS_KEY_ID",
        "DJANGO_SETTINGS_MODULE",
        "FMA_DATA_DIR",
    }
    assert needed <= common
    assert unquote(ROOT.locals["common_environment"]["FMA_DATA_DIR"]).startswith("/tmp/")
    api = environment_keys(ROOT.module_calls["api"]["environment"])
    aggregator = environment_keys(ROOT.module_calls["aggregator"]["environment"])
    assert {"FMA_AGGREGATOR_RUNNER", "FMA_AGGREGATOR_FUNCTION"} <= api
    assert "FMA_AGGREGATOR_RUNNER" in aggregator


def test_large_uploads_are_checked_by_the_aggregator_not_within_api_gateways_29_s():
    """Above FMA_UPLOAD_INLINE_CHECK_BYTES the API answers 202 and the aggregator function checks the
    upload; the function then announces the update's round itself, so it names itself too."""
    api = environment_keys(ROOT.module_calls["api"]["environment"])
    aggregator = environment_keys(ROOT.module_calls["aggregator"]["environment"])
    assert "FMA_UPLOAD_INLINE_CHECK_BYTES" in api
    assert "FMA_AGGREGATOR_FUNCTION" in aggregator
    variable = ROOT.variables["api_upload_inline_check_bytes"]
    assert unquote(variable["default"]) in (512 * 1024**2, str(512 * 1024**2))


def test_the_api_function_allows_its_own_execute_api_host():
    """Django refuses requests whose Host it does not know; API Gateway sends its execute-api host."""
    api = MODULES["api"]
    assert unquote(api.module_calls["function"]["environment"]) == "${local.environment}"
    environment = api.locals["environment"]
    assert "FMA_ALLOWED_HOSTS" in environment_keys(environment)
    assert "aws_apigatewayv2_api.this.api_endpoint" in str(environment)


def test_the_api_function_counts_callers_by_the_address_api_gateway_appends():
    """API Gateway appends the caller's address to X-Forwarded-For; earlier entries are the caller's
    own words, so throttles and the login lockout trust exactly one proxy."""
    environment = MODULES["api"].locals["environment"]
    assert "FMA_NUM_PROXIES" in environment_keys(environment)
    assert 'FMA_NUM_PROXIES = "1"' in str(environment)


def test_api_is_an_http_api_proxying_everything_to_the_function():
    api = MODULES["api"]
    (integration,) = api.resources_of("aws_apigatewayv2_integration").values()
    assert unquote(integration["integration_type"]) == "AWS_PROXY"
    assert unquote(integration["payload_format_version"]) == "2.0"
    (route,) = api.resources_of("aws_apigatewayv2_route").values()
    assert unquote(route["route_key"]) == "$default"
    (stage,) = api.resources_of("aws_apigatewayv2_stage").values()
    assert blocks(stage, "access_log_settings")
    assert unquote(ROOT.variables["api_handler"]["default"]) == "handler.lambda_handler"


def test_aggregator_is_scheduled_and_failed_async_invocations_are_kept():
    aggregator = MODULES["aggregator"]
    (config,) = aggregator.resources_of("aws_lambda_function_event_invoke_config").values()
    (destination,) = blocks(config, "destination_config")
    (on_failure,) = blocks(destination, "on_failure")
    assert {r.target[0] for r in references(on_failure["destination"])} == {"aws_sqs_queue"}
    assert "maximum_retry_attempts" in config
    for queue in aggregator.resources_of("aws_sqs_queue").values():
        assert queue.get("kms_master_key_id")
    (rule,) = aggregator.resources_of("aws_cloudwatch_event_rule").values()
    assert rule["schedule_expression"]
    principals = {unquote(p["principal"]) for p in aggregator.resources_of("aws_lambda_permission").values()}
    assert principals == {"events.amazonaws.com"}


def test_alarms_cover_failed_rounds_errors_and_5xx():
    monitoring = MODULES["monitoring"]
    alarms = monitoring.locals["alarms"]
    metrics = {name: unquote(alarm["metric"]) for name, alarm in alarms.items()}
    assert metrics["aggregator-errors"] == "Errors"
    assert metrics["api-5xx"] == "5xx"
    # failed rounds: the metric the functions print in embedded metric format (fma_aggregator.emf),
    # under the namespace both functions are given
    assert metrics["rounds-failed"] == "RoundsFailed"
    assert alarms["rounds-failed"]["namespace"] == "${local.namespace}"
    assert unquote(monitoring.locals["namespace"]) == "FMA/${var.name_prefix}"
    assert unquote(ROOT.locals["common_environment"]["FMA_METRICS_NAMESPACE"]) == "FMA/${var.name_prefix}"
    (alarm,) = monitoring.resources_of("aws_cloudwatch_metric_alarm").values()
    assert alarm["for_each"] == "${local.alarms}"
    assert alarm["alarm_actions"] == ["${aws_sns_topic.alarms.arn}"]
    (topic,) = monitoring.resources_of("aws_sns_topic").values()
    assert topic.get("kms_master_key_id")


def test_a_schedule_checks_readiness_and_an_alarm_fires_when_it_fails_or_stops():
    (rule,) = ROOT.resources_of("aws_cloudwatch_event_rule").values()
    assert "rate(" in unquote(rule["schedule_expression"])
    (target,) = ROOT.resources_of("aws_cloudwatch_event_target").values()
    assert target["arn"] == "${module.aggregator.function_arn}"
    assert target["input"] == '${jsonencode({fma = "readiness"})}'  # the handler's readiness event
    (permission,) = ROOT.resources_of("aws_lambda_permission").values()
    assert unquote(permission["principal"]) == "events.amazonaws.com"
    assert permission["source_arn"] == "${aws_cloudwatch_event_rule.readiness.arn}"
    (alarm,) = ROOT.resources_of("aws_cloudwatch_metric_alarm").values()
    assert unquote(alarm["metric_name"]) == "Ready"
    assert alarm["namespace"] == "${module.monitoring.metrics_namespace}"
    assert unquote(alarm["comparison_operator"]) == "LessThanThreshold"
    assert unquote(alarm["treat_missing_data"]) == "breaching"  # a check that stops reporting is not ready
    assert alarm["alarm_actions"] == ["${module.monitoring.alarm_topic_arn}"]


# --- each checker fails on a bad fixture --------------------------------------------------------

BAD_LAMBDA = """
resource "aws_lambda_function" "f" {
  function_name = "f"
  role          = "arn:aws:iam::123456789012:role/shared"
  runtime       = "python3.9"
}
"""

BAD_BUCKET = """
resource "aws_s3_bucket" "b" {
  bucket = "b"
}

resource "aws_s3_bucket_public_access_block" "b" {
  bucket                  = aws_s3_bucket.b.id
  block_public_acls       = true
  block_public_policy     = false
  ignore_public_acls      = true
  restrict_public_buckets = true
}
"""

BAD_DATABASE = """
resource "aws_db_instance" "db" {
  storage_encrypted   = false
  publicly_accessible = true
  skip_final_snapshot = true
}
"""

OPEN_SECURITY_GROUPS = """
resource "aws_security_group" "inline" {
  ingress {
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_vpc_security_group_ingress_rule" "standalone" {
  security_group_id = aws_security_group.inline.id
  cidr_ipv6         = "::/0"
  ip_protocol       = "-1"
}

resource "aws_security_group_rule" "legacy" {
  type        = "ingress"
  cidr_blocks = ["0.0.0.0/0"]
}
"""

BAD_IAM = """
data "aws_iam_policy_document" "p" {
  statement {
    actions   = ["s3:PutObject", "s3:GetObject"]
    resources = ["*"]
  }
  statement {
    actions   = ["secretsmanager:*"]
    resources = [var.secret_arns]
  }
  statement {
    actions   = ["ec2:DescribeInstances"]
    resources = ["*"]
  }
  statement {
    actions   = var.anything
    resources = [var.bucket_arn]
  }
}

resource "aws_iam_role_policy" "raw" {
  policy = "{}"
}
"""


def test_lambda_checker_rejects_a_function_without_own_role_or_log_group():
    problems = "\n".join(lambda_problems(parse_text(BAD_LAMBDA)))
    assert "no aws_iam_role of its own" in problems
    assert "does not log to a managed aws_cloudwatch_log_group" in problems
    assert "python3.12" in problems
    assert "not in the VPC" in problems


def test_bucket_checker_rejects_a_partly_public_unencrypted_bucket():
    problems = "\n".join(bucket_problems(parse_text(BAD_BUCKET)))
    assert "does not block all public access" in problems
    assert "not versioned" in problems
    assert "no SSE-KMS" in problems
    assert "non-TLS" in problems


def test_database_checker_rejects_a_public_unencrypted_database():
    problems = "\n".join(database_problems(parse_text(BAD_DATABASE)))
    assert "not encrypted" in problems
    assert "publicly accessible" in problems
    assert "final snapshot" in problems
    assert "backup retention" in problems


def test_ingress_checker_rejects_every_way_of_opening_to_the_internet():
    problems = open_ingress_problems(parse_text(OPEN_SECURITY_GROUPS))
    assert len(problems) == 3, problems


def test_iam_checker_rejects_writes_on_star_wildcards_and_raw_json():
    problems = "\n".join(iam_wildcard_problems(parse_text(BAD_IAM)))
    assert "statement 0 grants ['s3:PutObject'] on *" in problems
    assert "statement 1 uses a wildcard action" in problems
    assert "statement 2" not in problems  # read-only on * is allowed
    assert "statement 3 computes its actions" in problems
    assert "aws_iam_role_policy.raw is not built from an aws_iam_policy_document" in problems


LOOSE_FUNCTION_POLICY = """
data "aws_iam_policy_document" "fn" {
  statement {
    actions   = ["s3:GetObject"]
    resources = ["arn:aws:s3:::someone-elses-bucket/*"]
  }
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.secret_arns, var.other_secret_arn]
  }
}

resource "aws_cloudwatch_log_group" "forever" {
  name = "/aws/lambda/x"
}
"""


def test_scoping_and_log_group_checkers_reject_loose_policies_and_logs():
    module = parse_text(LOOSE_FUNCTION_POLICY)
    problems = "\n".join(scoped_access_problems(module))
    assert "statement 0: s3 actions not limited to var.bucket_arn" in problems
    assert "statement 1: secretsmanager actions not limited to var.secret_arns" in problems
    assert log_group_problems(module) == [
        "aws_cloudwatch_log_group.forever lacks retention or KMS encryption"
    ]
