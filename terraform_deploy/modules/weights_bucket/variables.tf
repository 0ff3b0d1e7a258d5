variable "bucket_name" {
  type        = string
  description = "Globally unique name of the weights bucket."
}

variable "prefix" {
  type        = string
  description = "Key prefix under which FMA stores objects (FMA_S3_PREFIX); empty or ending in '/'."
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key for SSE-KMS default encryption."
}

variable "update_expiration_days" {
  type        = number
  description = "Days after which raw client updates (<prefix>updates/) expire."
}

variable "abort_multipart_days" {
  type        = number
  description = "Days after which incomplete multipart uploads are aborted."
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days a replaced object version is kept before it expires."
}

variable "cors_allowed_origins" {
  type        = list(string)
  description = "Browser origins allowed to PUT/GET through presigned URLs; empty list means no CORS rule."
}

variable "access_log_retention_days" {
  type        = number
  description = "Days the bucket's access log objects are kept."
}
