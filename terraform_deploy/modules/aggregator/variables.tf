variable "function_name" {
  type        = string
  description = "Name of the aggregator function (also of its role, log group, queue and rule)."
}

variable "region" {
  type        = string
  description = "AWS region of the function (its ARN, which the function invokes, names it)."
}

variable "package_bucket" {
  type        = string
  description = "Bucket the zip is uploaded to before deployment."
}

variable "package_path" {
  type        = string
  description = "Path of the aggregator package zip."
}

variable "handler" {
  type        = string
  description = "Handler of the aggregator package."
}

variable "memory_size" {
  type        = number
  description = "Memory of the aggregator in MB (aggregation needs about one model's size)."
}

variable "timeout" {
  type        = number
  description = "Timeout of one aggregation, in seconds."
}

variable "reserved_concurrency" {
  type        = number
  description = "Reserved concurrent executions of the aggregator."
}

variable "ephemeral_storage_mb" {
  type        = number
  description = "Size of /tmp in MB."
}

variable "environment" {
  type        = map(string)
  description = "Environment variables of the aggregator."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets of the function."
}

variable "security_group_id" {
  type        = string
  description = "Security group of the function."
}

variable "kms_key_arn" {
  type        = string
  description = "Deployment KMS key."
}

variable "log_retention_days" {
  type        = number
  description = "Retention of the function's log group, in days."
}

variable "secret_arns" {
  type        = list(string)
  description = "Secrets the function may read."
}

variable "bucket_arn" {
  type        = string
  description = "ARN of the weights bucket."
}

variable "s3_prefix" {
  type        = string
  description = "Key prefix FMA uses in the bucket."
}

variable "sweep_schedule" {
  type        = string
  description = "EventBridge schedule expression of the sweep."
}

variable "max_retry_attempts" {
  type        = number
  description = "Retries of a failed asynchronous invocation before it goes to the queue."
}

variable "layers" {
  type        = list(string)
  description = "ARNs of the layer versions the function runs with (the RDS CA bundle)."
}
