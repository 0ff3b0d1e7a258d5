output "alarm_topic_arn" {
  description = "SNS topic all alarms notify."
  value       = aws_sns_topic.alarms.arn
}

output "metrics_namespace" {
  description = "CloudWatch namespace of FMA's own metrics (the functions' FMA_METRICS_NAMESPACE)."
  value       = local.namespace
}
