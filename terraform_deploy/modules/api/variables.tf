variable "function_name" {
  type        = string
  description = "Name of the API function (also of its HTTP API, role and log groups)."
}

variable "package_bucket" {
  type        = string
  description = "Bucket the zip is uploaded to before deployment."
}

variable "package_path" {
  type        = string
  description = "Path of the Zappa package zip."
}

variable "handler" {
  type        = string
  description = "Handler of the Zappa package."
}

variable "memory_size" {
  type        = number
  description = "Memory of the API function in MB."
}

variable "timeout" {
  type        = number
  description = "Timeout of the API function in seconds."
}

variable "reserved_concurrency" {
  type        = number
  description = "Reserved concurrent executions of the API function."
}

variable "environment" {
  type        = map(string)
  description = "Environment variables of the API function."
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
  description = "Retention of the function and access log groups, in days."
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

variable "aggregator_function_arn" {
  type        = string
  description = "Aggregator function the API may invoke asynchronously."
}

variable "throttling_burst_limit" {
  type        = number
  description = "HTTP API burst limit (requests)."
}

variable "throttling_rate_limit" {
  type        = number
  description = "HTTP API steady-state rate limit (requests per second)."
}

variable "layers" {
  type        = list(string)
  description = "ARNs of the layer versions the function runs with (the RDS CA bundle)."
}
