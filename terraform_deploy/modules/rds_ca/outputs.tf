output "layer_arn" {
  description = "ARN of the layer version holding the CA bundle."
  value       = aws_lambda_layer_version.this.arn
}

output "bundle_path" {
  description = "Where a function with the layer finds the bundle (FMA_DATABASE_CA_FILE)."
  value       = "/opt/${local.bundle_path_in_layer}"
}
