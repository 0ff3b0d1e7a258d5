output "key_arn" {
  description = "ARN of the deployment's KMS key."
  value       = aws_kms_key.this.arn
}

output "key_id" {
  description = "Key id of the deployment's KMS key (what FMA_S3_KMS_KEY_ID expects)."
  value       = aws_kms_key.this.key_id
}
