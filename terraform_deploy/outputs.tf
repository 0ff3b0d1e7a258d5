output "api_url" {
  description = "Base URL of the FMA API (clients and the CLI point here)."
  value       = module.api.api_url
}

output "api_function_name" {
  description = "Name of the API function (target of the migrate/createsuperuser manage events)."
  value       = module.api.function_name
}

output "aggregator_function_name" {
  description = "Name of the aggregator function."
  value       = module.aggregator.function_name
}

output "weights_bucket_name" {
  description = "Name of the weights bucket."
  value       = module.weights_bucket.bucket_name
}

output "weights_access_log_bucket_name" {
  description = "Bucket holding the weights bucket's S3 server access logs (presigned transfers)."
  value       = module.weights_bucket.access_log_bucket_name
}

output "database_endpoint" {
  description = "host:port of the metadata database (reachable from inside the VPC only)."
  value       = module.database.endpoint
}

output "database_secret_arn" {
  description = "ARN of the secret RDS keeps the master user name and password in (and rotates)."
  value       = module.database.master_user_secret_arn
}

output "secret_key_secret_arn" {
  description = "ARN of the Django SECRET_KEY secret."
  value       = module.secrets.secret_key_secret_arn
}

output "failed_invocations_queue_url" {
  description = "Queue holding aggregator invocations that failed every retry."
  value       = module.aggregator.failed_invocations_queue_url
}

output "alarm_topic_arn" {
  description = "SNS topic the alarms notify; subscribe to it."
  value       = module.monitoring.alarm_topic_arn
}
