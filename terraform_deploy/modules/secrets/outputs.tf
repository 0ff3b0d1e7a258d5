output "database_password" {
  description = "Generated database master password (fed to the database module)."
  value       = random_password.database.result
  sensitive   = true
}

output "database_secret_arn" {
  description = "ARN of the database credentials secret (FMA_DATABASE_SECRET_ARN)."
  value       = aws_secretsmanager_secret.database.arn
}

output "secret_key_secret_arn" {
  description = "ARN of the Django SECRET_KEY secret (FMA_SECRET_KEY_SECRET_ARN)."
  value       = aws_secretsmanager_secret.django_secret_key.arn
}
