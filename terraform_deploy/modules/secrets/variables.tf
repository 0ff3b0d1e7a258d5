variable "name_prefix" {
  type        = string
  description = "Prefix of the secret's name (<prefix>/django-secret-key-<suffix>)."
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key encrypting the secret."
}

variable "recovery_window_in_days" {
  type        = number
  description = "Days a deleted secret can still be restored (0 deletes at once)."
}
