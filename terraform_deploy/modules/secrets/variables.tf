variable "name_prefix" {
  type        = string
  description = "Prefix of the secret names (<prefix>/database, <prefix>/django-secret-key)."
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key encrypting both secrets."
}

variable "recovery_window_in_days" {
  type        = number
  description = "Days a deleted secret can still be restored (0 deletes at once)."
}

variable "db_username" {
  type        = string
  description = "Database master user name, stored in the credentials secret."
}

variable "db_host" {
  type        = string
  description = "Database host name, stored in the credentials secret."
}

variable "db_port" {
  type        = number
  description = "Database port, stored in the credentials secret."
}

variable "db_name" {
  type        = string
  description = "Database name, stored in the credentials secret."
}
