output "secret_key_secret_arn" {
  description = "ARN of the Django SECRET_KEY secret (FMA_SECRET_KEY_SECRET_ARN)."
  value       = aws_secretsmanager_secret.django_secret_key.arn
}
