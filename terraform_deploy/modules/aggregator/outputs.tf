output "function_name" {
  description = "Name of the aggregator function."
  value       = module.function.function_name
}

output "function_arn" {
  description = "ARN of the aggregator function."
  value       = module.function.function_arn
}

output "log_group_name" {
  description = "Log group of the aggregator function."
  value       = module.function.log_group_name
}

output "failed_invocations_queue_name" {
  description = "Name of the queue holding failed asynchronous invocations."
  value       = aws_sqs_queue.failed_invocations.name
}

output "failed_invocations_queue_url" {
  description = "URL of the queue holding failed asynchronous invocations."
  value       = aws_sqs_queue.failed_invocations.url
}
