# One customer-managed key encrypts everything this deployment stores: weights, database, secrets,
# logs, the dead-letter queue and the alarm topic. One key keeps the IAM story short (each function
# gets kms:Decrypt/GenerateDataKey on exactly this ARN) and rotation happens yearly by itself.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# A key policy's Resource "*" means "this key" (the policy is attached to one key), so the
# wildcard-resource checks do not apply to it:
data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:Key policy: Resource "*" is the key itself; the account-root statement is what keeps the key manageable.
  #checkov:skip=CKV_AWS_111:Key policy: Resource "*" is the key itself; service principals are limited by source-account/ARN conditions.
  #checkov:skip=CKV_AWS_356:Key policy: Resource "*" is the only resource a key policy can name.
  # The account keeps administrative control; IAM policies then decide which principal may use the
  # key (without this statement the key could become unmanageable).
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts log groups with the key itself, so it needs a grant in the key
  # policy, limited to this account's log groups in this region.
  statement {
    sid = "CloudWatchLogsEncrypt"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:*"]
    }
  }

  # CloudWatch alarms publish to the encrypted SNS topic; SNS asks KMS on the publisher's behalf.
  statement {
    sid       = "CloudWatchAlarmsPublish"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name_prefix}: weights, database, secrets, logs, queue and alarm topic"
  enable_key_rotation     = true
  deletion_window_in_days = var.deletion_window_in_days
  policy                  = data.aws_iam_policy_document.key.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name_prefix}"
  target_key_id = aws_kms_key.this.key_id
}
