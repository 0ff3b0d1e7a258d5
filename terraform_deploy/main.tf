# FMA on AWS: the wiring of the modules. Read top to bottom it is the deployment: a key, a private
# network, the database and its secrets, the weights bucket, the two functions and the alarms.

data "aws_caller_identity" "current" {}

locals {
  # Bucket names are global: account and region make the default unique without asking.
  bucket_name = "${var.name_prefix}-weights-${data.aws_caller_identity.current.account_id}-${var.region}"

  api_function_name        = "${var.name_prefix}-api"
  aggregator_function_name = "${var.name_prefix}-aggregator"

  # What both functions need to find the database, the secret key and the weights; the names are
  # the ones the Django settings (api_service) and the aggregator read.
  secret_arns = [module.database.master_user_secret_arn, module.secrets.secret_key_secret_arn]
  # The database secret is RDS's own (user and password only, rotated by RDS); the rest of the
  # connection comes from here, and the server's certificate is verified against the layer's CAs.
  common_environment = {
    DJANGO_SETTINGS_MODULE    = "fma_service.settings"
    FMA_DATABASE_SECRET_ARN   = module.database.master_user_secret_arn
    FMA_DATABASE_HOST         = module.database.address
    FMA_DATABASE_PORT         = tostring(module.database.port)
    FMA_DATABASE_NAME         = module.database.db_name
    FMA_DATABASE_CA_FILE      = module.rds_ca.bundle_path
    FMA_SECRET_KEY_SECRET_ARN = module.secrets.secret_key_secret_arn
    FMA_WEIGHT_STORE          = "s3"
    FMA_S3_BUCKET             = module.weights_bucket.bucket_name
    FMA_S3_PREFIX             = var.s3_prefix
    FMA_S3_KMS_KEY_ID         = module.kms.key_id
    # Lambda's only writable directory: Django's settings create their data dir at start-up.
    FMA_DATA_DIR = "/tmp/fma"
    # FMA's figures as embedded-metric-format log lines under the alarms' namespace (monitoring)
    FMA_METRICS_NAMESPACE = "FMA/${var.name_prefix}"
  }
}

module "kms" {
  source = "./modules/kms"

  name_prefix             = var.name_prefix
  region                  = var.region
  deletion_window_in_days = var.kms_deletion_window_days
}

module "network" {
  source = "./modules/network"

  name_prefix                 = var.name_prefix
  region                      = var.region
  vpc_cidr                    = var.vpc_cidr
  az_count                    = var.az_count
  interface_endpoint_services = var.interface_endpoint_services
  kms_key_arn                 = module.kms.key_arn
  log_retention_days          = var.log_retention_days
}

# Django's SECRET_KEY; the database password is generated, kept and rotated by RDS (modules/database).
module "secrets" {
  source = "./modules/secrets"

  name_prefix             = var.name_prefix
  kms_key_arn             = module.kms.key_arn
  recovery_window_in_days = var.secret_recovery_window_days
}

module "rds_ca" {
  source = "./modules/rds_ca"

  name_prefix = var.name_prefix
  region      = var.region
}

module "database" {
  source = "./modules/database"

  name_prefix = var.name_prefix
  vpc_id      = module.network.vpc_id
  subnet_ids  = module.network.private_subnet_ids
  client_security_group_ids = {
    api        = module.network.api_security_group_id
    aggregator = module.network.aggregator_security_group_id
  }
  kms_key_arn                         = module.kms.key_arn
  engine_version                      = var.db_engine_version
  instance_class                      = var.db_instance_class
  allocated_storage_gb                = var.db_allocated_storage_gb
  max_allocated_storage_gb            = var.db_max_allocated_storage_gb
  db_name                             = var.db_name
  username                            = var.db_username
  multi_az                            = var.db_multi_az
  backup_retention_days               = var.db_backup_retention_days
  deletion_protection                 = var.db_deletion_protection
  iam_database_authentication_enabled = var.db_iam_authentication
  monitoring_interval                 = var.db_monitoring_interval
  performance_insights_enabled        = var.db_performance_insights
  log_retention_days                  = var.log_retention_days
}

module "weights_bucket" {
  source = "./modules/weights_bucket"

  bucket_name                        = local.bucket_name
  prefix                             = var.s3_prefix
  kms_key_arn                        = module.kms.key_arn
  update_expiration_days             = var.update_expiration_days
  abort_multipart_days               = var.abort_multipart_days
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  cors_allowed_origins               = var.cors_allowed_origins
  access_log_retention_days          = var.s3_access_log_retention_days
}

module "aggregator" {
  source = "./modules/aggregator"

  function_name        = local.aggregator_function_name
  region               = var.region
  package_bucket       = module.weights_bucket.bucket_name
  package_path         = "${path.root}/${var.aggregator_package_path}"
  handler              = var.aggregator_handler
  memory_size          = var.aggregator_memory_mb
  timeout              = var.aggregator_timeout_seconds
  reserved_concurrency = var.aggregator_reserved_concurrency
  ephemeral_storage_mb = var.aggregator_ephemeral_storage_mb
  subnet_ids           = module.network.private_subnet_ids
  security_group_id    = module.network.aggregator_security_group_id
  kms_key_arn          = module.kms.key_arn
  log_retention_days   = var.log_retention_days
  secret_arns          = local.secret_arns
  layers               = [module.rds_ca.layer_arn]
  bucket_arn           = module.weights_bucket.bucket_arn
  s3_prefix            = var.s3_prefix
  sweep_schedule       = var.aggregator_sweep_rate_minutes == 1 ? "rate(1 minute)" : "rate(${var.aggregator_sweep_rate_minutes} minutes)"
  max_retry_attempts   = var.aggregator_max_retry_attempts
  # An upload the function checks announces its update's round like the API does.
  environment = merge(local.common_environment, {
    FMA_AGGREGATOR_RUNNER   = "lambda"
    FMA_AGGREGATOR_FUNCTION = local.aggregator_function_name
  })
}

module "api" {
  source = "./modules/api"

  function_name        = local.api_function_name
  package_bucket       = module.weights_bucket.bucket_name
  package_path         = "${path.root}/${var.api_package_path}"
  handler              = var.api_handler
  memory_size          = var.api_memory_mb
  timeout              = var.api_timeout_seconds
  reserved_concurrency = var.api_reserved_concurrency
  environment = merge(local.common_environment, {
    FMA_AGGREGATOR_RUNNER         = "lambda"
    FMA_AGGREGATOR_FUNCTION       = module.aggregator.function_name
    FMA_UPLOAD_INLINE_CHECK_BYTES = tostring(var.api_upload_inline_check_bytes)
  })
  subnet_ids              = module.network.private_subnet_ids
  security_group_id       = module.network.api_security_group_id
  kms_key_arn             = module.kms.key_arn
  log_retention_days      = var.log_retention_days
  secret_arns             = local.secret_arns
  layers                  = [module.rds_ca.layer_arn]
  bucket_arn              = module.weights_bucket.bucket_arn
  s3_prefix               = var.s3_prefix
  aggregator_function_arn = module.aggregator.function_arn
  throttling_burst_limit  = var.api_throttling_burst_limit
  throttling_rate_limit   = var.api_throttling_rate_limit
}

module "monitoring" {
  source = "./modules/monitoring"

  name_prefix                   = var.name_prefix
  kms_key_arn                   = module.kms.key_arn
  alarm_emails                  = var.alarm_emails
  aggregator_function_name      = module.aggregator.function_name
  api_id                        = module.api.api_id
  api_5xx_threshold             = var.api_5xx_alarm_threshold
  failed_invocations_queue_name = module.aggregator.failed_invocations_queue_name
  api_function_name             = module.api.function_name
  api_access_log_group_name     = module.api.access_log_group_name
  db_instance_id                = module.database.instance_id
  db_free_storage_alarm_bytes   = var.db_free_storage_alarm_gb * 1024 * 1024 * 1024
}

# Deploys migrate themselves: once the API function runs the new code (or a new database is up),
# Terraform invokes it with Zappa's manage event. `migrate` applies only what is missing, so a
# repeat does nothing; a migration that fails fails the invocation and so the apply, and the
# next apply tries again (a failed invocation is not recorded in the state).
resource "aws_lambda_invocation" "migrate" {
  function_name = module.api.function_name
  input         = jsonencode({ manage = "migrate --noinput" })

  triggers = {
    code     = filebase64sha256("${path.root}/${var.api_package_path}")
    database = module.database.resource_id
  }

  # the function must reach the database (network, endpoints) with its final settings and layer
  depends_on = [module.api, module.database, module.network, module.rds_ca]
}
