variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name of this deployment (the key alias is alias/<prefix>)."
}

variable "region" {
  type        = string
  description = "AWS region, used to name the CloudWatch Logs service principal in the key policy."
}

variable "deletion_window_in_days" {
  type        = number
  description = "Days a scheduled key deletion waits before the key (and everything it encrypts) is gone."
  default     = 30

  validation {
    condition     = var.deletion_window_in_days >= 7 && var.deletion_window_in_days <= 30
    error_message = "KMS accepts a deletion window of 7 to 30 days."
  }
}
