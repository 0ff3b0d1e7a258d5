variable "function_name" {
  type        = string
  description = "Name of the Lambda function (also of its role and log group)."
}

variable "description" {
  type        = string
  description = "Description shown in the Lambda console."
}

variable "package_path" {
  type        = string
  description = "Path of the deployment zip."
}

variable "package_bucket" {
  type        = string
  description = "Bucket the zip is uploaded to (under lambda-packages/) before Lambda deploys it."
}

variable "handler" {
  type        = string
  description = "Handler in module.function form."
}

variable "memory_size" {
  type        = number
  description = "Memory in MB (CPU scales with it)."
}

variable "timeout" {
  type        = number
  description = "Timeout in seconds."
}

variable "reserved_concurrency" {
  type        = number
  description = "Reserved concurrent executions (-1 for none)."
}

variable "ephemeral_storage_mb" {
  type        = number
  description = "Size of /tmp in MB."
  default     = 512
}

variable "environment" {
  type        = map(string)
  description = "Environment variables of the function."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets the function's ENIs are placed in."
}

variable "security_group_id" {
  type        = string
  description = "Security group of the function."
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key encrypting the environment variables and the log group."
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

variable "extra_policy_json" {
  type        = string
  description = "IAM policy document (JSON) with the function's own further statements."
}

variable "layers" {
  type        = list(string)
  description = "ARNs of the layer versions the function runs with (the RDS CA bundle, modules/rds_ca)."
  default     = []
}
