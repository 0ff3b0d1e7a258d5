variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name; also the DB instance identifier."
}

variable "vpc_id" {
  type        = string
  description = "VPC of the database's security group."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets (at least two availability zones) for the DB subnet group."
}

variable "client_security_group_ids" {
  type        = map(string)
  description = "Security groups allowed to connect on 5432, keyed by a name used in the rule description."
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key encrypting storage, snapshots and Performance Insights."
}

variable "engine_version" {
  type        = string
  description = "PostgreSQL version (major, or major.minor); the parameter group family follows the major."
}

variable "instance_class" {
  type        = string
  description = "RDS instance class."
}

variable "allocated_storage_gb" {
  type        = number
  description = "Initial storage in GiB."
}

variable "max_allocated_storage_gb" {
  type        = number
  description = "Storage autoscaling ceiling in GiB."
}

variable "db_name" {
  type        = string
  description = "Name of the database created in the instance."
}

variable "username" {
  type        = string
  description = "Master user name."
}

variable "multi_az" {
  type        = bool
  description = "Run a standby in a second availability zone."
}

variable "backup_retention_days" {
  type        = number
  description = "Days automated backups are kept."
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to delete the instance until this is switched off."
}

variable "iam_database_authentication_enabled" {
  type        = bool
  description = "Allow IAM database authentication besides the password."
}

variable "monitoring_interval" {
  type        = number
  description = "Enhanced monitoring interval in seconds (0 turns it off)."
}

variable "performance_insights_enabled" {
  type        = bool
  description = "Enable Performance Insights (7 days, free tier)."
}

variable "log_retention_days" {
  type        = number
  description = "Retention of the exported PostgreSQL log groups, in days."
}
