# Readiness on AWS. API Gateway never probes the functions, so a schedule asks the aggregator
# function, which sits in the same VPC with the same database, bucket and settings as the API, to
# run the checks of /readyz (database, migrations applied, weight store) every few minutes. It
# reports Ready (1 or 0) as an embedded-metric-format line; the alarm fires when Ready drops below 1
# or stops arriving (a function that cannot start reports nothing).

variable "readiness_check_rate_minutes" {
  type        = number
  description = "Minutes between two scheduled readiness checks (the not-ready alarm waits for two of them)."
  default     = 1

  validation {
    condition     = var.readiness_check_rate_minutes >= 1 && var.readiness_check_rate_minutes <= 60 && floor(var.readiness_check_rate_minutes) == var.readiness_check_rate_minutes
    error_message = "readiness_check_rate_minutes must be a whole number of minutes from 1 to 60."
  }
}

resource "aws_cloudwatch_event_rule" "readiness" {
  name                = "${local.aggregator_function_name}-readiness"
  description         = "Scheduled FMA readiness check: database, migrations, weight store"
  schedule_expression = var.readiness_check_rate_minutes == 1 ? "rate(1 minute)" : "rate(${var.readiness_check_rate_minutes} minutes)"
}

resource "aws_cloudwatch_event_target" "readiness" {
  rule  = aws_cloudwatch_event_rule.readiness.name
  arn   = module.aggregator.function_arn
  input = jsonencode({ fma = "readiness" })
}

resource "aws_lambda_permission" "readiness" {
  statement_id   = "AllowReadinessCheckFromEventBridge"
  action         = "lambda:InvokeFunction"
  function_name  = module.aggregator.function_name
  principal      = "events.amazonaws.com"
  source_account = data.aws_caller_identity.current.account_id
  source_arn     = aws_cloudwatch_event_rule.readiness.arn
}

resource "aws_cloudwatch_metric_alarm" "not_ready" {
  alarm_name          = "${var.name_prefix}-not-ready"
  alarm_description   = "FMA's scheduled readiness check failed or did not report: see the aggregator's log for the check that failed."
  namespace           = module.monitoring.metrics_namespace
  metric_name         = "Ready"
  statistic           = "Minimum"
  period              = 60 * var.readiness_check_rate_minutes
  evaluation_periods  = 2
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  actions_enabled     = true
  alarm_actions       = [module.monitoring.alarm_topic_arn]
  ok_actions          = [module.monitoring.alarm_topic_arn]
}
