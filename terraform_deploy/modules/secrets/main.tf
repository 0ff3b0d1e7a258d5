# Django's SECRET_KEY, the one secret this configuration generates: the functions read it at
# start-up and it never appears in a variable or a file. (The database password is RDS's own
# managed secret: modules/database.)
#
# The name is a prefix plus a suffix Terraform chooses: a deleted secret keeps its name for the
# recovery window, and a fixed name would stop a stack with the same prefix from being created
# again until the window ends.

resource "random_password" "django_secret_key" {
  length  = 64
  special = true
}

resource "aws_secretsmanager_secret" "django_secret_key" {
  #checkov:skip=CKV2_AWS_57:Django's SECRET_KEY signs sessions and password-reset links; rotating it on a schedule would log everyone out. It is replaced on purpose with `terraform apply -replace` (README, "Rotating secrets").
  name_prefix             = "${var.name_prefix}/django-secret-key-"
  description             = "Django SECRET_KEY of the FMA API (plain string)"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.recovery_window_in_days
}

resource "aws_secretsmanager_secret_version" "django_secret_key" {
  secret_id     = aws_secretsmanager_secret.django_secret_key.id
  secret_string = random_password.django_secret_key.result
}
