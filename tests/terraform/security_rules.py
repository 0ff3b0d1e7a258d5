"""Security properties of a parsed Terraform module, one checker per property.

Each checker returns a list of problems (empty when the module is fine), so the tests can assert
both that terraform_deploy/ passes and that a small bad fixture fails.
"""

from __future__ import annotations

import re
from typing import Any

from .hcl_config import Module, Reference, attributes, blocks, references, unquote

OPEN_CIDRS = {"0.0.0.0/0", "::/0"}
READ_ONLY_ACTION = re.compile(r"^[a-z0-9-]+:(Get|List|Describe|Head)[A-Za-z]*$")


def _refs_to(value: Any, resource_type: str) -> set[str]:
    return {
        ref.target[1]
        for ref in references(value)
        if ref.kind == "resource" and ref.target[0] == resource_type
    }


def lambda_problems(module: Module) -> list[str]:
    """Every function has its own role and an encrypted, expiring log group named for it."""
    problems = []
    log_groups = module.resources_of("aws_cloudwatch_log_group")
    for name, function in module.resources_of("aws_lambda_function").items():
        roles = _refs_to(function.get("role"), "aws_iam_role")
        if not roles or not roles <= set(module.resources_of("aws_iam_role")):
            problems.append(f"aws_lambda_function.{name} has no aws_iam_role of its own")
        logging = blocks(function, "logging_config")
        groups = _refs_to(logging[0].get("log_group") if logging else None, "aws_cloudwatch_log_group")
        if not groups:
            problems.append(f"aws_lambda_function.{name} does not log to a managed aws_cloudwatch_log_group")
        for group in groups:
            body = log_groups.get(group, {})
            if unquote(body.get("name", "")) != f"/aws/lambda/{function.get('function_name')}":
                problems.append(f"log group {group} is not /aws/lambda/<function_name> of {name}")
            if "retention_in_days" not in body or "kms_key_id" not in body:
                problems.append(f"log group {group} lacks retention or KMS encryption")
        if unquote(function.get("runtime")) != "python3.12":
            problems.append(f"aws_lambda_function.{name} does not use the python3.12 runtime")
        if not blocks(function, "vpc_config"):
            problems.append(f"aws_lambda_function.{name} is not in the VPC")
    return problems


def log_group_problems(module: Module) -> list[str]:
    return [
        f"aws_cloudwatch_log_group.{name} lacks retention or KMS encryption"
        for name, body in module.resources_of("aws_cloudwatch_log_group").items()
        if "retention_in_days" not in body or "kms_key_id" not in body
    ]


def bucket_problems(module: Module) -> list[str]:
    """Every bucket blocks public access, is versioned, SSE-KMS encrypted and TLS-only; a bucket
    that receives S3 server access logs is SSE-S3 encrypted instead (S3 delivers no logs to SSE-KMS)."""
    problems = []
    log_targets = {
        target
        for logging in module.resources_of("aws_s3_bucket_logging").values()
        for target in _refs_to(logging.get("target_bucket"), "aws_s3_bucket")
    }

    def settings_for(resource_type: str, bucket: str) -> list[dict[str, Any]]:
        return [
            body
            for body in module.resources_of(resource_type).values()
            if bucket in _refs_to(body.get("bucket"), "aws_s3_bucket")
        ]

    for bucket in module.resources_of("aws_s3_bucket"):
        flags = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
        if not any(
            all(b.get(f) is True for f in flags)
            for b in settings_for("aws_s3_bucket_public_access_block", bucket)
        ):
            problems.append(f"aws_s3_bucket.{bucket} does not block all public access")
        if not any(
            unquote(blocks(block, "versioning_configuration")[0].get("status")) == "Enabled"
            for block in settings_for("aws_s3_bucket_versioning", bucket)
        ):
            problems.append(f"aws_s3_bucket.{bucket} is not versioned")
        defaults = [
            default
            for config in settings_for("aws_s3_bucket_server_side_encryption_configuration", bucket)
            for rule in blocks(config, "rule")
            for default in blocks(rule, "apply_server_side_encryption_by_default")
        ]
        if bucket in log_targets:
            if not any(unquote(default.get("sse_algorithm")) == "AES256" for default in defaults):
                problems.append(f"aws_s3_bucket.{bucket} receives access logs but is not SSE-S3 encrypted")
        elif not any(
            unquote(default.get("sse_algorithm")) == "aws:kms" and default.get("kms_master_key_id")
            for default in defaults
        ):
            problems.append(f"aws_s3_bucket.{bucket} has no SSE-KMS default encryption")
        if not _denies_insecure_transport(module, settings_for("aws_s3_bucket_policy", bucket)):
            problems.append(f"aws_s3_bucket.{bucket} has no policy denying non-TLS requests")
    return problems


def _denies_insecure_transport(module: Module, policies: list[dict[str, Any]]) -> bool:
    documents = module.data_of("aws_iam_policy_document")
    for policy in policies:
        for ref in references(policy.get("policy")):
            if ref.kind != "data" or ref.target[0] != "aws_iam_policy_document":
                continue
            for statement in blocks(documents.get(ref.target[1], {}), "statement"):
                conditions = blocks(statement, "condition")
                if unquote(statement.get("effect")) == "Deny" and any(
                    unquote(c.get("variable")) == "aws:SecureTransport"
                    and [unquote(v) for v in c.get("values", [])] == ["false"]
                    for c in conditions
                ):
                    return True
    return False


def database_problems(module: Module) -> list[str]:
    """Every instance is encrypted with KMS, private, backed up and leaves a final snapshot."""
    problems = []
    for name, db in module.resources_of("aws_db_instance").items():
        where = f"aws_db_instance.{name}"
        if db.get("storage_encrypted") is not True or not db.get("kms_key_id"):
            problems.append(f"{where} storage is not encrypted with a KMS key")
        if db.get("publicly_accessible") is not False:
            problems.append(f"{where} is (or may be) publicly accessible")
        if db.get("skip_final_snapshot") is not False or not db.get("final_snapshot_identifier"):
            problems.append(f"{where} would be deleted without a final snapshot")
        if "backup_retention_period" not in db or db.get("backup_retention_period") == 0:
            problems.append(f"{where} has no backup retention")
        if "deletion_protection" not in db:
            problems.append(f"{where} leaves deletion protection unset")
        groups = _refs_to(db.get("vpc_security_group_ids"), "aws_security_group")
        if not groups:
            problems.append(f"{where} has no security group of its own")
        for rule in module.resources_of("aws_vpc_security_group_ingress_rule").values():
            if _refs_to(rule.get("security_group_id"), "aws_security_group") & groups and (
                "referenced_security_group_id" not in rule
                or rule.get("from_port") != 5432
                or rule.get("to_port") != 5432
            ):
                problems.append(f"{where}: an ingress rule is not PostgreSQL from a named security group")
    return problems


def open_ingress_problems(module: Module) -> list[str]:
    """No security group admits traffic from the whole internet."""
    problems = []
    for name, group in module.resources_of("aws_security_group").items():
        for ingress in blocks(group, "ingress"):
            cidrs = {unquote(c) for c in ingress.get("cidr_blocks", []) + ingress.get("ipv6_cidr_blocks", [])}
            if cidrs & OPEN_CIDRS:
                problems.append(f"aws_security_group.{name} has ingress from {sorted(cidrs & OPEN_CIDRS)}")
    for name, rule in module.resources_of("aws_security_group_rule").items():
        cidrs = {unquote(c) for c in rule.get("cidr_blocks", []) + rule.get("ipv6_cidr_blocks", [])}
        if unquote(rule.get("type")) == "ingress" and cidrs & OPEN_CIDRS:
            problems.append(f"aws_security_group_rule.{name} has ingress from {sorted(cidrs & OPEN_CIDRS)}")
    for name, rule in module.resources_of("aws_vpc_security_group_ingress_rule").items():
        if {unquote(rule.get("cidr_ipv4")), unquote(rule.get("cidr_ipv6"))} & OPEN_CIDRS:
            problems.append(f"aws_vpc_security_group_ingress_rule.{name} is open to the internet")
    return problems


def _key_policy_documents(module: Module) -> set[str]:
    """Policy documents used as KMS key policies: there Resource "*" means the key itself."""
    return {
        ref.target[1]
        for key in module.resources_of("aws_kms_key").values()
        for ref in references(key.get("policy"))
        if ref.kind == "data" and ref.target[0] == "aws_iam_policy_document"
    }


def _actions(statement: dict[str, Any]) -> list[str] | None:
    """The statement's actions, or None when they are an expression this check cannot read."""
    actions = statement.get("actions", [])
    if not isinstance(actions, list) or any("${" in str(a) for a in actions):
        return None
    return [unquote(a) for a in actions]


def iam_wildcard_problems(module: Module) -> list[str]:
    """No Allow statement grants a write action on "*", no statement uses a wildcard action, and
    every action list is written out (an expression could hide either)."""
    problems = []
    key_policies = _key_policy_documents(module)
    for name, document in module.data_of("aws_iam_policy_document").items():
        if name in key_policies:
            continue
        for index, statement in enumerate(blocks(document, "statement")):
            if unquote(statement.get("effect", '"Allow"')) != "Allow":
                continue
            actions = _actions(statement)
            resources = statement.get("resources", [])
            resources = resources if isinstance(resources, list) else [resources]
            where = f"data.aws_iam_policy_document.{name} statement {index}"
            if actions is None:
                problems.append(f"{where} computes its actions; write them out so they can be checked")
                continue
            if any(a == "*" or a.endswith(":*") for a in actions) or "not_actions" in statement:
                problems.append(f"{where} uses a wildcard action")
            if "*" in {unquote(r) for r in resources} or "not_resources" in statement:
                writes = [a for a in actions if not READ_ONLY_ACTION.match(a)]
                if writes:
                    problems.append(f"{where} grants {writes} on *")
    for kind in ("aws_iam_role_policy", "aws_iam_policy"):
        for name, policy in module.resources_of(kind).items():
            kinds = {ref.kind for ref in references(policy.get("policy"))}
            if not kinds & {"data", "var"}:
                problems.append(
                    f"{kind}.{name} is not built from an aws_iam_policy_document (unchecked JSON)"
                )
    return problems


def statement_resources(module: Module, statement: dict[str, Any]) -> set[Reference]:
    """What a statement's resources refer to, with locals expanded (one level is all we use)."""
    found = set()
    for ref in references(statement.get("resources")):
        if ref.kind == "local":
            found |= references(module.locals.get(ref.target[0]))
        else:
            found.add(ref)
    return found


def scoped_access_problems(module: Module) -> list[str]:
    """A function's policy aims each service at the one resource it may touch."""
    expected = {
        "s3": Reference("var", ("bucket_arn",)),
        "secretsmanager": Reference("var", ("secret_arns",)),
        "kms": Reference("var", ("kms_key_arn",)),
    }
    problems = []
    for name, document in module.data_of("aws_iam_policy_document").items():
        for index, statement in enumerate(blocks(document, "statement")):
            services = {action.split(":")[0] for action in _actions(statement) or []}
            for service in services & set(expected):
                # The object ARNs are built from the bucket ARN and FMA's key prefix.
                aimed_at = statement_resources(module, statement) - {Reference("var", ("s3_prefix",))}
                if aimed_at != {expected[service]}:
                    problems.append(
                        f"data.aws_iam_policy_document.{name} statement {index}: {service} actions not limited to var.{expected[service].target[0]}"
                    )
    return problems


def service_trust_problems(module: Module) -> list[str]:
    """A service principal acts for every AWS account; each statement that admits one (a role's
    trust, a resource policy) must tie it to this account, and each Lambda permission too, so that
    no other account's resources can make the service act here (the confused deputy)."""
    problems = []
    for name, document in module.data_of("aws_iam_policy_document").items():
        for statement in blocks(document, "statement"):
            services = [p for p in blocks(statement, "principals") if unquote(p.get("type")) == "Service"]
            if not services or unquote(statement.get("effect", "Allow")) == "Deny":
                continue
            keys = {unquote(c.get("variable")) for c in blocks(statement, "condition")}
            if not keys & {"aws:SourceAccount", "aws:SourceArn", "kms:EncryptionContext:aws:logs:arn"}:
                problems.append(
                    f"data.aws_iam_policy_document.{name} admits a service without a source condition"
                )
    for name, permission in module.resources_of("aws_lambda_permission").items():
        if not permission.get("source_account"):
            problems.append(f"aws_lambda_permission.{name} has no source_account")
    return problems


def all_problems(module: Module) -> list[str]:
    return [
        *service_trust_problems(module),
        *lambda_problems(module),
        *log_group_problems(module),
        *bucket_problems(module),
        *database_problems(module),
        *open_ingress_problems(module),
        *iam_wildcard_problems(module),
    ]


def environment_keys(value: Any) -> set[str]:
    """Keys of an environment map written as an object literal or inside merge(...)."""
    if isinstance(value, dict):
        return set(attributes(value))
    return set(re.findall(r"\b([A-Z][A-Z0-9_]+)\s*=", str(value)))
