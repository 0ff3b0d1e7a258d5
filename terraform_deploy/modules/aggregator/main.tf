# The aggregator: one Lambda function started two ways. The API invokes it asynchronously when a
# round becomes ready; an EventBridge schedule sweeps for rounds whose deadline passed or whose
# aggregation crashed. Asynchronous invocations that still fail after the retries land in an
# encrypted SQS queue, so no round is lost silently.

resource "aws_sqs_queue" "failed_invocations" {
  name                      = "${var.function_name}-failed"
  kms_master_key_id         = var.kms_key_arn
  message_retention_seconds = 1209600 # 14 days, SQS's maximum: time to read and replay a failure
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  # Spelled out from the name: the function, whose role carries this policy, cannot be referenced here.
  function_arn = "arn:${data.aws_partition.current.partition}:lambda:${var.region}:${data.aws_caller_identity.current.account_id}:function:${var.function_name}"
}

# Beyond the shared access (modules/function): the aggregator's object actions, the failure
# queue, and invoking itself.
data "aws_iam_policy_document" "aggregator" {
  # Reads updates, writes aggregates (multipart above FMA_S3_PART_SIZE, aborted on failure; a
  # sharded round lists its parts), checks uploads (listing their parts), removes rejected,
  # expired and unreferenced objects under FMA's prefix, and aborts the multipart uploads clients
  # or killed workers abandoned (the sweep: fma_django.housekeeping).
  statement {
    sid = "WeightsObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${var.bucket_arn}/${var.s3_prefix}*"]
  }

  # The sweep finds the multipart uploads no record references by listing them (it asks only for
  # FMA's prefix; S3 has no prefix condition for this action). Listing objects is in the shared
  # access (modules/function).
  statement {
    sid       = "WeightsListUploads"
    actions   = ["s3:ListBucketMultipartUploads"]
    resources = [var.bucket_arn]
  }

  # The sweep asks for each round it finds due, a sharded round for one invocation per shard, and
  # an upload the function accepted for its round: all asynchronous invocations of itself.
  statement {
    sid       = "InvokeItself"
    actions   = ["lambda:InvokeFunction"]
    resources = [local.function_arn]
  }

  # Lambda delivers the on-failure record of an asynchronous invocation with the function's role.
  statement {
    sid       = "ReportFailedInvocations"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.failed_invocations.arn]
  }
}

module "function" {
  source = "../function"

  function_name        = var.function_name
  description          = "FMA aggregator (rounds: async invoke and scheduled sweep)"
  package_bucket       = var.package_bucket
  package_path         = var.package_path
  handler              = var.handler
  memory_size          = var.memory_size
  timeout              = var.timeout
  reserved_concurrency = var.reserved_concurrency
  ephemeral_storage_mb = var.ephemeral_storage_mb
  environment          = var.environment
  subnet_ids           = var.subnet_ids
  security_group_id    = var.security_group_id
  kms_key_arn          = var.kms_key_arn
  log_retention_days   = var.log_retention_days
  secret_arns          = var.secret_arns
  layers               = var.layers
  bucket_arn           = var.bucket_arn
  extra_policy_json    = data.aws_iam_policy_document.aggregator.json
}

resource "aws_lambda_function_event_invoke_config" "this" {
  function_name                = module.function.function_name
  maximum_retry_attempts       = var.max_retry_attempts
  maximum_event_age_in_seconds = 3600 # a round request older than an hour is picked up by the sweep anyway

  destination_config {
    on_failure {
      destination = aws_sqs_queue.failed_invocations.arn
    }
  }
}

resource "aws_cloudwatch_event_rule" "sweep" {
  name                = "${var.function_name}-sweep"
  description         = "Periodic FMA round sweep: deadlines, stalled aggregations"
  schedule_expression = var.sweep_schedule
}

resource "aws_cloudwatch_event_target" "sweep" {
  rule = aws_cloudwatch_event_rule.sweep.name
  arn  = module.function.function_arn
}

resource "aws_lambda_permission" "sweep" {
  statement_id   = "AllowSweepFromEventBridge"
  action         = "lambda:InvokeFunction"
  function_name  = module.function.function_name
  principal      = "events.amazonaws.com"
  source_account = data.aws_caller_identity.current.account_id
  source_arn     = aws_cloudwatch_event_rule.sweep.arn
}
