output "alarm_topic_arn" {
  description = "SNS topic all alarms notify."
  value       = aws_sns_topic.alarms.arn
}
