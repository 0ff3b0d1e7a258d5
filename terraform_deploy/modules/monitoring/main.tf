# Alarms for what an operator must act on: rounds that fail, an aggregator that errors, requests
# that fail on the server side, and asynchronous invocations that were given up. All alarms
# notify one encrypted SNS topic; subscribe people or a pager to it.

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

# One alarm per condition an operator must act on; all fire at the first occurrence in five
# minutes (the API's at a configurable count) and all notify the topic, also when they clear.
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
    }
    aggregator-errors = {
      description = "The aggregator function raised or timed out."
      namespace   = "AWS/Lambda"
      metric      = "Errors"
      dimensions  = { FunctionName = var.aggregator_function_name }
      statistic   = "Sum"
      threshold   = 1
    }
    api-5xx = {
      description = "The FMA HTTP API answered with server errors (function errors, timeouts, throttles)."
      namespace   = "AWS/ApiGateway"
      metric      = "5xx"
      dimensions  = { ApiId = var.api_id }
      statistic   = "Sum"
      threshold   = var.api_5xx_threshold
    }
    aggregator-invocations-given-up = {
      description = "Asynchronous aggregator invocations failed every retry and wait in the queue."
      namespace   = "AWS/SQS"
      metric      = "ApproximateNumberOfMessagesVisible"
      dimensions  = { QueueName = var.failed_invocations_queue_name }
      statistic   = "Maximum"
      threshold   = 1
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
  evaluation_periods  = 1
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}
