"""What a real account needs of terraform_deploy/ beyond `terraform apply` succeeding (issue 20):
deploys that migrate themselves, defaults that fit a new account and cost what the code uses, a
stack that can be created again under the same prefix, the database password out of Terraform's
state, the database's certificate verified, services tied to this account, the database and the
throttles alarmed, and presigned transfers logged. Checked on the parsed configuration."""

from __future__ import annotations

import re

import hcl2

from .hcl_config import TERRAFORM_DIR, blocks, load_tree, parse_text, unquote
from .security_rules import bucket_problems, environment_keys, service_trust_problems

TREE = load_tree()
ROOT = TREE[TERRAFORM_DIR]
MODULES = {path.name: module for path, module in TREE.items()}
REPO = TERRAFORM_DIR.parent

# A new account may run 10 functions at once, and Lambda keeps at least 10 of the account's
# concurrency unreserved: on such an account no function can reserve anything.
NEW_ACCOUNT_CONCURRENCY = 10
UNRESERVED_MINIMUM = 10
CLIENT = re.compile(r"client\(\s*\"([a-z0-9-]+)\"")


def jsonencoded(expression: str) -> object:
    """The value of ``jsonencode(<object literal>)``, evaluated by parsing the literal as HCL."""
    match = re.fullmatch(r"\$\{jsonencode\((.*)\)\}", expression, re.DOTALL)
    assert match, expression
    value = hcl2.loads(f"value = {match.group(1)}\n")["value"]
    return {unquote(k): unquote(v) for k, v in value.items()}


def test_every_deploy_migrates_through_the_api_function():
    (migrate,) = ROOT.resources_of("aws_lambda_invocation").values()
    assert migrate["function_name"] == "${module.api.function_name}"
    # Zappa's manage event, as tests/deploy/test_handlers.py sends it to the API zip
    assert jsonencoded(migrate["input"]) == {"manage": "migrate --noinput"}
    # new code or a new database invokes it again; the package is the one the function runs
    triggers = migrate["triggers"]
    assert "${var.api_package_path}" in triggers["code"]
    assert unquote(ROOT.module_calls["api"]["package_path"]) == "${path.root}/${var.api_package_path}"
    assert triggers["database"] == "${module.database.resource_id}"
    assert {"${module.api}", "${module.database}", "${module.network}"} <= set(migrate["depends_on"])


def called_aws_services() -> set[str]:
    """The service of every boto3 client the packages' code creates."""
    sources = [*REPO.glob("*/src/**/*.py"), *REPO.glob("connectors/*/src/**/*.py")]
    return {service for source in sources for service in CLIENT.findall(source.read_text())}


def test_interface_endpoints_default_to_the_services_the_code_calls():
    """S3 goes through the free gateway endpoint; every other client needs an interface endpoint
    (about $7.30 a month per zone each), and none is paid for that no code calls."""
    called = called_aws_services()
    assert {"s3", "secretsmanager", "lambda"} <= called  # the scan found the clients
    defaults = {unquote(s) for s in ROOT.variables["interface_endpoint_services"]["default"]}
    assert defaults == called - {"s3"}
    gateway = MODULES["network"].resources_of("aws_vpc_endpoint")["s3"]
    assert unquote(gateway["vpc_endpoint_type"]) == "Gateway"


def test_concurrency_defaults_fit_a_new_account():
    reserved = [
        ROOT.variables[name]["default"]
        for name in ("api_reserved_concurrency", "aggregator_reserved_concurrency")
    ]
    assert sum(r for r in reserved if r != -1) <= NEW_ACCOUNT_CONCURRENCY - UNRESERVED_MINIMUM
    function = MODULES["function"].resources_of("aws_lambda_function")["this"]
    assert function["reserved_concurrent_executions"] == "${var.reserved_concurrency}"


def test_a_stack_with_the_same_prefix_can_be_created_again():
    """A final snapshot and a deleted secret outlive the stack; their names must not repeat."""
    (database,) = MODULES["database"].resources_of("aws_db_instance").values()
    assert database["skip_final_snapshot"] is False
    assert "${random_id.final_snapshot.hex}" in database["final_snapshot_identifier"]
    assert MODULES["database"].resources_of("random_id")["final_snapshot"]
    for module in TREE.values():
        for name, secret in module.resources_of("aws_secretsmanager_secret").items():
            assert "name" not in secret, f"{module.path.name}: secret {name} has a fixed name"
            assert secret["name_prefix"]


def test_the_database_password_is_made_and_rotated_by_rds_never_by_terraform():
    (database,) = MODULES["database"].resources_of("aws_db_instance").values()
    assert database["manage_master_user_password"] is True
    assert database["master_user_secret_kms_key_id"] == "${var.kms_key_arn}"
    assert "password" not in database
    for module in TREE.values():  # nothing generates a password that could reach the database
        assert all("database" not in name for name in module.resources_of("random_password"))
    common = ROOT.locals["common_environment"]
    assert common["FMA_DATABASE_SECRET_ARN"] == "${module.database.master_user_secret_arn}"
    # the managed secret holds user and password only; the rest comes from the environment
    assert {"FMA_DATABASE_HOST", "FMA_DATABASE_PORT", "FMA_DATABASE_NAME"} <= environment_keys(common)
    assert "${module.database.master_user_secret_arn}" in ROOT.locals["secret_arns"]
    for name in ("api", "aggregator"):
        assert ROOT.module_calls[name]["secret_arns"] == "${local.secret_arns}"


def test_the_functions_verify_the_database_against_the_rds_ca_fetched_at_deploy_time():
    rds_ca = MODULES["rds_ca"]
    (bundle,) = rds_ca.data_of("http").values()
    assert unquote(bundle["url"]).startswith("https://truststore.pki.rds.amazonaws.com/${var.region}/")
    (archive,) = rds_ca.data_of("archive_file").values()
    (source,) = blocks(archive, "source")
    assert source["filename"] == "${local.bundle_path_in_layer}"
    assert (
        unquote(rds_ca.outputs["bundle_path"]["value"]) == "/opt/${local.bundle_path_in_layer}"
    )  # layers unpack in /opt
    assert ROOT.locals["common_environment"]["FMA_DATABASE_CA_FILE"] == "${module.rds_ca.bundle_path}"
    for name in ("api", "aggregator"):
        assert ROOT.module_calls[name]["layers"] == ["${module.rds_ca.layer_arn}"]
    function = MODULES["function"].resources_of("aws_lambda_function")["this"]
    assert function["layers"] == "${var.layers}"


def test_service_principals_are_tied_to_this_account():
    trusts = {
        "function": "lambda.amazonaws.com",
        "database": "monitoring.rds.amazonaws.com",
        "network": "vpc-flow-logs.amazonaws.com",
        "weights_bucket": "logging.s3.amazonaws.com",
    }
    for module_name, service in trusts.items():
        module = MODULES[module_name]
        assert service in str(module.data_of("aws_iam_policy_document"))
        assert service_trust_problems(module) == []
    for module_name in ("api", "aggregator"):
        assert MODULES[module_name].resources_of("aws_lambda_permission")
        assert service_trust_problems(MODULES[module_name]) == []


def test_the_service_trust_checker_rejects_unconditioned_principals():
    bad = parse_text(
        """
data "aws_iam_policy_document" "trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_lambda_permission" "open" {
  action        = "lambda:InvokeFunction"
  function_name = "f"
  principal     = "events.amazonaws.com"
}
"""
    )
    problems = "\n".join(service_trust_problems(bad))
    assert "aws_iam_policy_document.trust admits a service without a source condition" in problems
    assert "aws_lambda_permission.open has no source_account" in problems


def test_alarms_cover_the_database_and_throttled_requests():
    monitoring = MODULES["monitoring"]
    alarms = monitoring.locals["alarms"]
    for name, metric in (
        ("database-cpu", "CPUUtilization"),
        ("database-free-storage", "FreeStorageSpace"),
        ("database-freeable-memory", "FreeableMemory"),
    ):
        assert unquote(alarms[name]["namespace"]) == "AWS/RDS"
        assert unquote(alarms[name]["metric"]) == metric
        assert alarms[name]["dimensions"] == {"DBInstanceIdentifier": "${var.db_instance_id}"}
    assert alarms["database-free-storage"]["below"] is True  # a floor, not a ceiling
    assert alarms["database-cpu"]["below"] is False
    # HTTP APIs publish no throttle metric: the access log's 429s are counted
    throttled = monitoring.resources_of("aws_cloudwatch_log_metric_filter")["api_throttled"]
    assert throttled["log_group_name"] == "${var.api_access_log_group_name}"
    assert '$.status = \\"429\\"' in throttled["pattern"]
    assert "api_throttled" in alarms["api-throttled"]["metric"]
    assert unquote(alarms["api-function-throttled"]["metric"]) == "Throttles"
    assert (
        ROOT.module_calls["monitoring"]["api_access_log_group_name"] == "${module.api.access_log_group_name}"
    )
    assert ROOT.module_calls["monitoring"]["db_instance_id"] == "${module.database.instance_id}"
    # every alarm has the attributes the one alarm resource reads
    shapes = {frozenset(alarm) for alarm in alarms.values()}
    assert len(shapes) == 1


def test_presigned_transfers_are_recorded_in_s3_access_logs():
    bucket = MODULES["weights_bucket"]
    (logging,) = bucket.resources_of("aws_s3_bucket_logging").values()
    assert logging["bucket"] == "${aws_s3_bucket.this.id}"
    assert logging["target_bucket"] == "${aws_s3_bucket.access_logs.id}"
    statement = blocks(bucket.data_of("aws_iam_policy_document")["access_logs"], "statement")[0]
    (principal,) = blocks(statement, "principals")
    assert [unquote(i) for i in principal["identifiers"]] == ["logging.s3.amazonaws.com"]
    conditions = {unquote(c["variable"]): c["values"] for c in blocks(statement, "condition")}
    assert conditions["aws:SourceArn"] == ["${aws_s3_bucket.this.arn}"]
    assert bucket_problems(bucket) == []  # the log bucket is private, versioned and TLS-only too


def test_the_bucket_checker_holds_a_log_bucket_to_sse_s3():
    bad = parse_text(
        """
resource "aws_s3_bucket" "data" {
  bucket = "data"
}

resource "aws_s3_bucket" "logs" {
  bucket = "logs"
}

resource "aws_s3_bucket_logging" "data" {
  bucket        = aws_s3_bucket.data.id
  target_bucket = aws_s3_bucket.logs.id
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = "k"
    }
  }
}
"""
    )
    problems = "\n".join(bucket_problems(bad))
    assert "aws_s3_bucket.logs receives access logs but is not SSE-S3 encrypted" in problems
    assert "aws_s3_bucket.data has no SSE-KMS default encryption" in problems
