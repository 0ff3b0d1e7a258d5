# One Lambda function in the VPC with everything it needs to run and be observed: its own role
# (never shared, so each function's permissions can be read on their own), its log group created
# before the function so Lambda never creates an unencrypted, never-expiring one, and the code
# from a zip built outside Terraform.
#
# The zip goes through S3 rather than straight into the Lambda API: direct uploads stop at 50 MB,
# and a Django + numpy package comes close to that; from S3 the limit is 250 MB unzipped.

data "aws_caller_identity" "current" {}

# Only Lambda acting for this account may take the role (no confused deputy).
data "aws_iam_policy_document" "trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "this" {
  name               = var.function_name
  description        = "Execution role of the ${var.function_name} Lambda function"
  assume_role_policy = data.aws_iam_policy_document.trust.json
}

# The AWS managed policy grants the ENI actions a VPC function needs and CloudWatch Logs writes;
# ec2:CreateNetworkInterface cannot be scoped to a resource, so a hand-written policy would need
# "*" just the same, and the managed one follows Lambda's changes.
resource "aws_iam_role_policy_attachment" "vpc_access" {
  role       = aws_iam_role.this.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

# What every FMA function needs: its two secrets, listing the weights bucket and the deployment
# key. Each caller adds its own statements (its object actions first) through extra_policy_json.
data "aws_iam_policy_document" "access" {
  source_policy_documents = [var.extra_policy_json]

  statement {
    sid       = "ReadOwnSecrets"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = var.secret_arns
  }

  # Not limited by s3:prefix: S3 answers a read of a missing key with 404 only to callers that
  # may list the bucket, and a HEAD request carries no prefix for the condition to match. Listing
  # reveals key names, never content.
  statement {
    sid       = "WeightsList"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
  }

  statement {
    sid       = "UseDeploymentKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "this" {
  name   = "fma-access"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.access.json
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/aws/lambda/${var.function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_s3_object" "package" {
  bucket      = var.package_bucket
  key         = "lambda-packages/${var.function_name}.zip"
  source      = var.package_path
  source_hash = filemd5(var.package_path)
  kms_key_id  = var.kms_key_arn
}

resource "aws_lambda_function" "this" {
  function_name = var.function_name
  description   = var.description
  role          = aws_iam_role.this.arn

  runtime           = "python3.12"
  architectures     = ["x86_64"] # the zips are built with manylinux x86_64 wheels
  handler           = var.handler
  s3_bucket         = aws_s3_object.package.bucket
  s3_key            = aws_s3_object.package.key
  s3_object_version = aws_s3_object.package.version_id # a new upload is a new version: Lambda redeploys
  source_code_hash  = filebase64sha256(var.package_path)

  layers                         = var.layers
  memory_size                    = var.memory_size
  timeout                        = var.timeout
  reserved_concurrent_executions = var.reserved_concurrency
  kms_key_arn                    = var.kms_key_arn

  ephemeral_storage {
    size = var.ephemeral_storage_mb
  }

  environment {
    variables = var.environment
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [var.security_group_id]
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.this.name
  }

  depends_on = [
    aws_iam_role_policy_attachment.vpc_access,
    aws_iam_role_policy.this,
    aws_cloudwatch_log_group.this,
  ]
}
