output "bucket_name" {
  description = "Name of the weights bucket, once versioning, encryption and the TLS policy are in place."
  value       = aws_s3_bucket.this.bucket

  # Users of the name (the Lambda package uploads first) need a versioned, encrypted bucket:
  # an object written before versioning is on has the version id "null".
  depends_on = [
    aws_s3_bucket_versioning.this,
    aws_s3_bucket_server_side_encryption_configuration.this,
    aws_s3_bucket_policy.this,
  ]
}

output "bucket_arn" {
  description = "ARN of the weights bucket."
  value       = aws_s3_bucket.this.arn
}

output "access_log_bucket_name" {
  description = "Bucket holding the weights bucket's S3 server access logs."
  value       = aws_s3_bucket.access_logs.bucket
}
