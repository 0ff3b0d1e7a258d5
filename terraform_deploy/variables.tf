# Inputs of the FMA deployment. Defaults give a small, safe production setup in one region;
# terraform.tfvars.example shows the values most deployments change.

variable "region" {
  type        = string
  description = "AWS region to deploy into, e.g. us-east-1."
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like an AWS region name, e.g. us-east-1 or eu-west-3."
  }
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name, so that several deployments can share an account."
  default     = "fma"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-20 characters of lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "environment" {
  type        = string
  description = "Environment label put in the Environment tag (e.g. prod, staging)."
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,15}$", var.environment))
    error_message = "environment must be 1-16 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "tags" {
  type        = map(string)
  description = "Extra tags added to every resource."
  default     = {}
}

# --- network -----------------------------------------------------------------------------------

variable "vpc_cidr" {
  type        = string
  description = "IPv4 CIDR of the VPC (a /16 to /24); each private subnet gets a quarter-byte slice of it."
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 24
    error_message = "vpc_cidr must be a valid IPv4 CIDR block with a prefix length between /16 and /24."
  }
}

variable "az_count" {
  type        = number
  description = "Availability zones to spread the private subnets (and interface endpoints) over."
  default     = 2

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 4
    error_message = "az_count must be 2 to 4: RDS needs subnets in two zones, and each extra zone adds endpoint cost."
  }
}

variable "interface_endpoint_services" {
  type        = list(string)
  description = "Services the functions' code calls through interface VPC endpoints (S3 always uses a free gateway endpoint): the settings read Secrets Manager, the API and the aggregator invoke the aggregator. Each endpoint costs about $7.30 a month per zone."
  default     = ["secretsmanager", "lambda"]

  validation {
    condition     = length(setsubtract(var.interface_endpoint_services, ["secretsmanager", "lambda", "sqs", "logs", "kms", "sts", "monitoring"])) == 0
    error_message = "interface_endpoint_services may only list secretsmanager, lambda, sqs, logs, kms, sts and monitoring."
  }

  validation {
    condition     = contains(var.interface_endpoint_services, "secretsmanager") && contains(var.interface_endpoint_services, "lambda")
    error_message = "secretsmanager and lambda are required: the functions read their secrets and the API invokes the aggregator."
  }
}

# --- database ----------------------------------------------------------------------------------

variable "db_engine_version" {
  type        = string
  description = "PostgreSQL version of the metadata database (major, or major.minor)."
  default     = "16"

  validation {
    condition     = can(regex("^(1[4-9])(\\.[0-9]+)?$", var.db_engine_version))
    error_message = "db_engine_version must be PostgreSQL 14 or newer, as a major (\"16\") or major.minor (\"16.4\") version."
  }
}

variable "db_instance_class" {
  type        = string
  description = "RDS instance class of the metadata database."
  default     = "db.t4g.micro"

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.db_instance_class))
    error_message = "db_instance_class must be an RDS instance class such as db.t4g.micro or db.m7g.large."
  }
}

variable "db_allocated_storage_gb" {
  type        = number
  description = "Initial storage of the database in GiB (gp3)."
  default     = 20

  validation {
    condition     = var.db_allocated_storage_gb >= 20 && var.db_allocated_storage_gb <= 65536
    error_message = "db_allocated_storage_gb must be between 20 and 65536 GiB."
  }
}

variable "db_max_allocated_storage_gb" {
  type        = number
  description = "Ceiling of storage autoscaling in GiB (must exceed the initial storage)."
  default     = 100

  validation {
    condition     = var.db_max_allocated_storage_gb > var.db_allocated_storage_gb && var.db_max_allocated_storage_gb <= 65536
    error_message = "db_max_allocated_storage_gb must exceed db_allocated_storage_gb and be at most 65536 GiB."
  }
}

variable "db_name" {
  type        = string
  description = "Name of the PostgreSQL database FMA uses."
  default     = "fma"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.db_name))
    error_message = "db_name must start with a letter and hold only lowercase letters, digits and underscores (max 63)."
  }
}

variable "db_username" {
  type        = string
  description = "Master user name of the database."
  default     = "fma"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,15}$", var.db_username)) && !contains(["admin", "postgres", "rdsadmin"], var.db_username)
    error_message = "db_username must be 1-16 lowercase letters, digits or underscores, start with a letter, and not be a reserved name."
  }
}

variable "db_multi_az" {
  type        = bool
  description = "Keep a synchronous standby in a second zone (doubles the database cost)."
  default     = false
}

variable "db_backup_retention_days" {
  type        = number
  description = "Days automated database backups are kept."
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be 1 to 35 (0 would turn backups off)."
  }
}

variable "db_deletion_protection" {
  type        = bool
  description = "Refuse to delete the database; switch off deliberately before tearing down."
  default     = true
}

variable "db_iam_authentication" {
  type        = bool
  description = "Also allow IAM database authentication (FMA itself logs in with the generated password)."
  default     = true
}

variable "db_monitoring_interval" {
  type        = number
  description = "Enhanced monitoring interval in seconds; 0 turns it off."
  default     = 60

  validation {
    condition     = contains([0, 1, 5, 10, 15, 30, 60], var.db_monitoring_interval)
    error_message = "db_monitoring_interval must be one of 0, 1, 5, 10, 15, 30, 60."
  }
}

variable "db_performance_insights" {
  type        = bool
  description = "Enable Performance Insights with 7 days of free retention."
  default     = true
}

# --- weights bucket ----------------------------------------------------------------------------

variable "s3_prefix" {
  type        = string
  description = "Key prefix of FMA's objects in the weights bucket (FMA_S3_PREFIX)."
  default     = "fma/"

  validation {
    condition     = var.s3_prefix == "" || can(regex("^[a-zA-Z0-9!_.*'()-]+(/[a-zA-Z0-9!_.*'()-]+)*/$", var.s3_prefix))
    error_message = "s3_prefix must be empty or safe key characters ending in '/', e.g. \"fma/\"."
  }
}

variable "update_expiration_days" {
  type        = number
  description = "Days after which raw client updates (<prefix>updates/) expire."
  default     = 30

  validation {
    condition     = var.update_expiration_days >= 1 && var.update_expiration_days <= 3650
    error_message = "update_expiration_days must be 1 to 3650."
  }
}

variable "abort_multipart_days" {
  type        = number
  description = "Days after which incomplete multipart uploads are aborted."
  default     = 2

  validation {
    condition     = var.abort_multipart_days >= 1 && var.abort_multipart_days <= 365
    error_message = "abort_multipart_days must be 1 to 365."
  }
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days an overwritten or deleted object version is kept for recovery."
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && var.noncurrent_version_expiration_days <= 3650
    error_message = "noncurrent_version_expiration_days must be 1 to 3650."
  }
}

variable "cors_allowed_origins" {
  type        = list(string)
  description = "Browser origins allowed to use presigned URLs (PUT/GET); empty for SDK/CLI clients only."
  default     = []

  validation {
    condition     = alltrue([for o in var.cors_allowed_origins : can(regex("^https://[a-zA-Z0-9.-]+(:[0-9]+)?$", o)) || can(regex("^http://localhost(:[0-9]+)?$", o))])
    error_message = "cors_allowed_origins must be https origins (scheme://host[:port], no path), or http://localhost for development."
  }
}

# --- functions ---------------------------------------------------------------------------------

variable "api_package_path" {
  type        = string
  description = "Path (relative to terraform_deploy/) of the API's Zappa package zip."
  default     = "../api_service/dist/fma-service-lambda.zip"

  validation {
    condition     = endswith(var.api_package_path, ".zip")
    error_message = "api_package_path must point to a .zip file."
  }
}

variable "api_handler" {
  type        = string
  description = "Handler of the API package (Zappa's generated handler)."
  default     = "handler.lambda_handler"
}

variable "api_memory_mb" {
  type        = number
  description = "Memory of the API function in MB."
  default     = 1024

  validation {
    condition     = var.api_memory_mb >= 128 && var.api_memory_mb <= 10240
    error_message = "api_memory_mb must be between 128 and 10240 (Lambda's limits)."
  }
}

variable "api_timeout_seconds" {
  type        = number
  description = "Timeout of the API function; HTTP requests are cut at 30 s by API Gateway, manage commands may use the rest."
  default     = 60

  validation {
    condition     = var.api_timeout_seconds >= 3 && var.api_timeout_seconds <= 900
    error_message = "api_timeout_seconds must be 3 to 900."
  }
}

variable "api_upload_inline_check_bytes" {
  type        = number
  description = "Uploads larger than this are checked (joined, hashed, validated) by the aggregator function after their complete request answers 202: a request has 29 s behind API Gateway."
  default     = 536870912 # 512 MiB

  validation {
    condition     = var.api_upload_inline_check_bytes >= 0
    error_message = "api_upload_inline_check_bytes must not be negative."
  }
}

variable "api_reserved_concurrency" {
  type        = number
  description = "Reserved concurrency of the API (-1: none); it also caps the database connections the API can open. A new account's quota is 10 concurrent executions, all of which Lambda keeps unreserved, so reserving needs a raised quota."
  default     = -1

  validation {
    condition     = var.api_reserved_concurrency == -1 || (var.api_reserved_concurrency >= 1 && var.api_reserved_concurrency <= 1000)
    error_message = "api_reserved_concurrency must be -1 (no reservation) or 1 to 1000."
  }
}

variable "api_throttling_rate_limit" {
  type        = number
  description = "Steady-state requests per second the HTTP API admits."
  default     = 50

  validation {
    condition     = var.api_throttling_rate_limit >= 1 && var.api_throttling_rate_limit <= 10000
    error_message = "api_throttling_rate_limit must be 1 to 10000."
  }
}

variable "api_throttling_burst_limit" {
  type        = number
  description = "Burst of requests the HTTP API admits above the rate."
  default     = 100

  validation {
    condition     = var.api_throttling_burst_limit >= 1 && var.api_throttling_burst_limit <= 5000
    error_message = "api_throttling_burst_limit must be 1 to 5000."
  }
}

variable "aggregator_package_path" {
  type        = string
  description = "Path (relative to terraform_deploy/) of the aggregator's package zip."
  default     = "../aggregator/dist/fma-aggregator-lambda.zip"

  validation {
    condition     = endswith(var.aggregator_package_path, ".zip")
    error_message = "aggregator_package_path must point to a .zip file."
  }
}

variable "aggregator_handler" {
  type        = string
  description = "Handler of the aggregator package."
  default     = "fma_aggregator.lambda_handler.handler"
}

variable "aggregator_memory_mb" {
  type        = number
  description = "Memory of the aggregator in MB; aggregation streams tensor by tensor and needs about one model's size plus the runtime."
  default     = 2048

  validation {
    condition     = var.aggregator_memory_mb >= 128 && var.aggregator_memory_mb <= 10240
    error_message = "aggregator_memory_mb must be between 128 and 10240 (Lambda's limits)."
  }
}

variable "aggregator_timeout_seconds" {
  type        = number
  description = "Timeout of one aggregation in seconds."
  default     = 900

  validation {
    condition     = var.aggregator_timeout_seconds >= 10 && var.aggregator_timeout_seconds <= 900
    error_message = "aggregator_timeout_seconds must be 10 to 900 (Lambda's maximum)."
  }
}

variable "aggregator_ephemeral_storage_mb" {
  type        = number
  description = "Size of the aggregator's /tmp in MB."
  default     = 1024

  validation {
    condition     = var.aggregator_ephemeral_storage_mb >= 512 && var.aggregator_ephemeral_storage_mb <= 10240
    error_message = "aggregator_ephemeral_storage_mb must be 512 to 10240."
  }
}

variable "aggregator_reserved_concurrency" {
  type        = number
  description = "Reserved concurrency of the aggregator (-1: none): rounds of different experiments run in parallel up to this. As for the API, reserving needs an account quota above 10."
  default     = -1

  validation {
    condition     = var.aggregator_reserved_concurrency == -1 || (var.aggregator_reserved_concurrency >= 1 && var.aggregator_reserved_concurrency <= 1000)
    error_message = "aggregator_reserved_concurrency must be -1 (no reservation) or 1 to 1000."
  }
}

variable "aggregator_sweep_rate_minutes" {
  type        = number
  description = "Minutes between scheduled sweeps for due or stalled rounds."
  default     = 5

  validation {
    condition     = var.aggregator_sweep_rate_minutes >= 1 && var.aggregator_sweep_rate_minutes <= 1440
    error_message = "aggregator_sweep_rate_minutes must be 1 to 1440."
  }
}

variable "aggregator_max_retry_attempts" {
  type        = number
  description = "Retries of a failed asynchronous aggregator invocation before it is sent to the failure queue."
  default     = 2

  validation {
    condition     = var.aggregator_max_retry_attempts >= 0 && var.aggregator_max_retry_attempts <= 2
    error_message = "aggregator_max_retry_attempts must be 0 to 2 (Lambda's limits)."
  }
}

# --- observability and secrets -----------------------------------------------------------------

variable "log_retention_days" {
  type        = number
  description = "Retention of every log group, in days."
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch Logs' values: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "alarm_emails" {
  type        = list(string)
  description = "E-mail addresses that receive alarm notifications (each confirms its subscription)."
  default     = []

  validation {
    condition     = alltrue([for e in var.alarm_emails : can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", e))])
    error_message = "alarm_emails must contain e-mail addresses."
  }
}

variable "api_5xx_alarm_threshold" {
  type        = number
  description = "Server errors of the API in five minutes that raise the 5xx alarm."
  default     = 5

  validation {
    condition     = var.api_5xx_alarm_threshold >= 1
    error_message = "api_5xx_alarm_threshold must be at least 1."
  }
}

variable "s3_access_log_retention_days" {
  type        = number
  description = "Days the weights bucket's S3 access logs (every presigned upload and download) are kept."
  default     = 365

  validation {
    condition     = var.s3_access_log_retention_days >= 1
    error_message = "s3_access_log_retention_days must be at least 1."
  }
}

variable "db_free_storage_alarm_gb" {
  type        = number
  description = "Free database storage in GiB below which the storage alarm fires (storage autoscaling grows it only up to db_max_allocated_storage_gb)."
  default     = 2

  validation {
    condition     = var.db_free_storage_alarm_gb >= 1
    error_message = "db_free_storage_alarm_gb must be at least 1."
  }
}

variable "secret_recovery_window_days" {
  type        = number
  description = "Days a deleted secret can be restored; 0 deletes immediately (useful for throwaway stacks)."
  default     = 7

  validation {
    condition     = var.secret_recovery_window_days == 0 || (var.secret_recovery_window_days >= 7 && var.secret_recovery_window_days <= 30)
    error_message = "secret_recovery_window_days must be 0 or 7 to 30."
  }
}

variable "kms_deletion_window_days" {
  type        = number
  description = "Days a scheduled KMS key deletion waits; everything encrypted with the key is lost after it."
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be 7 to 30."
  }
}
