variable "name_prefix" {
  type        = string
  description = "Prefix of alarm, topic and metric namespace names."
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key encrypting the alarm topic."
}

variable "alarm_emails" {
  type        = list(string)
  description = "E-mail addresses subscribed to the alarm topic (each must confirm)."
}

variable "aggregator_function_name" {
  type        = string
  description = "Aggregator function whose errors are watched."
}

variable "api_id" {
  type        = string
  description = "HTTP API whose 5xx responses are watched."
}

variable "api_5xx_threshold" {
  type        = number
  description = "5xx responses in five minutes that raise the alarm."
}

variable "failed_invocations_queue_name" {
  type        = string
  description = "Queue of given-up asynchronous aggregator invocations."
}
