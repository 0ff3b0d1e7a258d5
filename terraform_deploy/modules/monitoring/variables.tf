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

variable "api_function_name" {
  type        = string
  description = "Name of the API function (its Lambda throttles are alarmed)."
}

variable "api_access_log_group_name" {
  type        = string
  description = "Log group of the HTTP API's access log (its 429 answers are counted)."
}

variable "db_instance_id" {
  type        = string
  description = "Identifier of the RDS instance (CPU, storage and memory are alarmed)."
}

variable "db_free_storage_alarm_bytes" {
  type        = number
  description = "Free storage in bytes at or below which the storage alarm fires."
}
