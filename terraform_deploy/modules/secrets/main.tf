# The two secrets the functions read at start-up: the database credentials (one JSON document with
# everything a connection needs, so the code never assembles it from several variables) and
# Django's SECRET_KEY. Both values are generated here and never appear in a variable or a file.

resource "random_password" "database" {
  length  = 40
  special = true
  # RDS refuses '/', '@', '"' and spaces in master passwords; these are safe in a libpq URL too.
  override_special = "!#$%^&*()-_=+[]{}<>:?"
}

resource "random_password" "django_secret_key" {
  length  = 64
  special = true
}

resource "aws_secretsmanager_secret" "database" {
  name                    = "${var.name_prefix}/database"
  description             = "FMA metadata database credentials (JSON: username, password, host, port, dbname)"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.recovery_window_in_days
}

resource "aws_secretsmanager_secret_version" "database" {
  secret_id = aws_secretsmanager_secret.database.id
  secret_string = jsonencode({
    engine   = "postgres"
    username = var.db_username
    password = random_password.database.result
    host     = var.db_host
    port     = var.db_port
    dbname   = var.db_name
  })
}

resource "aws_secretsmanager_secret" "django_secret_key" {
  name                    = "${var.name_prefix}/django-secret-key"
  description             = "Django SECRET_KEY of the FMA API (plain string)"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.recovery_window_in_days
}

resource "aws_secretsmanager_secret_version" "django_secret_key" {
  secret_id     = aws_secretsmanager_secret.django_secret_key.id
  secret_string = random_password.django_secret_key.result
}
