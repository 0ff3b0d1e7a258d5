variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name of this deployment."
}

variable "region" {
  type        = string
  description = "AWS region; names the VPC endpoint services (com.amazonaws.<region>.<service>)."
}

variable "vpc_cidr" {
  type        = string
  description = "IPv4 CIDR of the VPC; each private subnet takes a /4-smaller slice of it."
}

variable "az_count" {
  type        = number
  description = "Number of availability zones (one private subnet each); RDS needs at least two."
}

variable "interface_endpoint_services" {
  type        = list(string)
  description = "AWS services reached through interface VPC endpoints (S3 always has a gateway endpoint)."
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key that encrypts the flow-log group."
}

variable "log_retention_days" {
  type        = number
  description = "Retention of the VPC flow-log group, in days."
}
