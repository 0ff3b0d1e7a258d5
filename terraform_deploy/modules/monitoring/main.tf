# Alarms for what an operator must act on: rounds that fail, an aggregator that errors, requests
# that fail on the server side, and asynchronous invocations that were given up. All alarms
# notify one encrypted SNS topic; subscribe people or a pager to it.

locals {
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

# The round engine logs "round failed" when a round ends in the failed state; the function itself
# may still return normally, so Lambda's Errors metric alone would miss it.
resource "aws_cloudwatch_log_metric_filter" "rounds_failed" {
  name           = "${var.name_prefix}-rounds-failed"
  log_group_name = var.aggregator_log_group_name
  pattern        = "\"round failed\""

  metric_transformation {
    name          = "RoundsFailed"
    namespace     = local.namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

resource "aws_cloudwatch_metric_alarm" "rounds_failed" {
  alarm_name          = "${var.name_prefix}-rounds-failed"
  alarm_description   = "At least one FMA round failed (log line 'round failed' in the aggregator)."
  namespace           = local.namespace
  metric_name         = aws_cloudwatch_log_metric_filter.rounds_failed.metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "aggregator_errors" {
  alarm_name          = "${var.name_prefix}-aggregator-errors"
  alarm_description   = "The aggregator function raised or timed out."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = var.aggregator_function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "api_5xx" {
  alarm_name          = "${var.name_prefix}-api-5xx"
  alarm_description   = "The FMA HTTP API answered with server errors (function errors, timeouts, throttles)."
  namespace           = "AWS/ApiGateway"
  metric_name         = "5xx"
  dimensions          = { ApiId = var.api_id }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = var.api_5xx_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "failed_invocations" {
  alarm_name          = "${var.name_prefix}-aggregator-invocations-given-up"
  alarm_description   = "Asynchronous aggregator invocations failed every retry and wait in the queue."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = var.failed_invocations_queue_name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}
