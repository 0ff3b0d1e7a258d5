# Alarms for what an operator must act on: rounds that fail, an aggregator that errors, requests
# that fail on the server side or are throttled, asynchronous invocations that were given up, and
# a database running short of CPU, storage or memory. All alarms notify one encrypted SNS topic;
# subscribe people or a pager to it.

locals {
  # where the functions' embedded-metric-format lines put FMA's figures (main.tf: FMA_METRICS_NAMESPACE)
  namespace = "FMA/${var.name_prefix}"
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name_prefix}-alarms"
  kms_master_key_id = var.kms_key_arn
}

resource "aws_sns_topic_subscription" "email" {
  for_each = toset(var.alarm_emails)

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = each.value
}

# API Gateway answers 429 when the stage's rate or burst limit is exceeded; HTTP APIs publish no
# throttle metric of their own, so the access log's status field is counted.
resource "aws_cloudwatch_log_metric_filter" "api_throttled" {
  name           = "${var.name_prefix}-api-throttled"
  log_group_name = var.api_access_log_group_name
  pattern        = "{ $.status = \"429\" }"

  metric_transformation {
    name          = "ApiThrottled"
    namespace     = local.namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

# One alarm per condition an operator must act on; the event alarms fire at the first occurrence
# in five minutes (the API's 5xx at a configurable count), the database's when a level holds for
# fifteen; all notify the topic, also when they clear.
locals {
  alarms = {
    # The functions print each failed round as an embedded-metric-format log line
    # (fma_aggregator.emf, namespace FMA_METRICS_NAMESPACE); the function itself may still return
    # normally, so Lambda's Errors metric alone would miss it.
    rounds-failed = {
      description = "At least one FMA round failed (metric RoundsFailed, from the functions' EMF log lines)."
      namespace   = local.namespace
      metric      = "RoundsFailed"
      dimensions  = {}
      statistic   = "Sum"
      threshold   = 1
      periods     = 1
      below       = false
    }
    aggregator-errors = {
      description = "The aggregator function raised or timed out."
      namespace   = "AWS/Lambda"
      metric      = "Errors"
      dimensions  = { FunctionName = var.aggregator_function_name }
      statistic   = "Sum"
      threshold   = 1
      periods     = 1
      below       = false
    }
    api-5xx = {
      description = "The FMA HTTP API answered with server errors (function errors, timeouts, throttles)."
      namespace   = "AWS/ApiGateway"
      metric      = "5xx"
      dimensions  = { ApiId = var.api_id }
      statistic   = "Sum"
      threshold   = var.api_5xx_threshold
      periods     = 1
      below       = false
    }
    aggregator-invocations-given-up = {
      description = "Asynchronous aggregator invocations failed every retry and wait in the queue."
      namespace   = "AWS/SQS"
      metric      = "ApproximateNumberOfMessagesVisible"
      dimensions  = { QueueName = var.failed_invocations_queue_name }
      statistic   = "Maximum"
      threshold   = 1
      periods     = 1
      below       = false
    }
    api-throttled = {
      description = "API Gateway refused requests with 429: the stage's rate or burst limit was exceeded."
      namespace   = local.namespace
      metric      = aws_cloudwatch_log_metric_filter.api_throttled.metric_transformation[0].name
      dimensions  = {}
      statistic   = "Sum"
      threshold   = 1
      periods     = 1
      below       = false
    }
    api-function-throttled = {
      description = "Lambda throttled the API function: the account's or the function's concurrency is exhausted."
      namespace   = "AWS/Lambda"
      metric      = "Throttles"
      dimensions  = { FunctionName = var.api_function_name }
      statistic   = "Sum"
      threshold   = 1
      periods     = 1
      below       = false
    }
    database-cpu = {
      description = "The database's CPU stayed at 80 % or more for fifteen minutes."
      namespace   = "AWS/RDS"
      metric      = "CPUUtilization"
      dimensions  = { DBInstanceIdentifier = var.db_instance_id }
      statistic   = "Average"
      threshold   = 80
      periods     = 3
      below       = false
    }
    database-free-storage = {
      description = "The database's free storage fell to the configured floor (db_free_storage_alarm_gb)."
      namespace   = "AWS/RDS"
      metric      = "FreeStorageSpace"
      dimensions  = { DBInstanceIdentifier = var.db_instance_id }
      statistic   = "Minimum"
      threshold   = var.db_free_storage_alarm_bytes
      below       = true
      periods     = 1
    }
    database-freeable-memory = {
      description = "The database's freeable memory stayed at 128 MiB or less for fifteen minutes."
      namespace   = "AWS/RDS"
      metric      = "FreeableMemory"
      dimensions  = { DBInstanceIdentifier = var.db_instance_id }
      statistic   = "Average"
      threshold   = 128 * 1024 * 1024
      below       = true
      periods     = 3
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "this" {
  for_each = local.alarms

  alarm_name          = "${var.name_prefix}-${each.key}"
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  dimensions          = each.value.dimensions
  statistic           = each.value.statistic
  period              = 300
  evaluation_periods  = each.value.periods
  threshold           = each.value.threshold
  comparison_operator = each.value.below ? "LessThanOrEqualToThreshold" : "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}
