# The FMA API: the Zappa-packaged Django project in one Lambda function, behind an API Gateway
# HTTP API whose single $default route proxies every request (payload format 2.0) to it. Django
# does the routing and the authentication; API Gateway only terminates TLS and throttles.

data "aws_caller_identity" "current" {}

locals {
  # Django answers only the hosts it is told about (FMA_ALLOWED_HOSTS); API Gateway passes on the
  # host the client called, the API's execute-api host.
  # API Gateway appends the caller's address to X-Forwarded-For (what came before it, the caller
  # wrote): FMA_NUM_PROXIES = 1 makes the login throttle and lockout count that last entry, not the
  # address Zappa derives from the header's earlier, caller-written entries.
  environment = merge(var.environment, {
    FMA_ALLOWED_HOSTS = trimprefix(aws_apigatewayv2_api.this.api_endpoint, "https://")
    FMA_NUM_PROXIES   = "1"
  })
}

# Beyond the shared access (modules/function): the API's object actions and handing a ready
# round to the aggregator.
data "aws_iam_policy_document" "api" {
  # Presigned URLs carry the signer's permissions: clients upload parts and download aggregates
  # with exactly these object actions, limited to FMA's prefix.
  statement {
    sid = "WeightsObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${var.bucket_arn}/${var.s3_prefix}*"]
  }

  statement {
    sid       = "StartRounds"
    actions   = ["lambda:InvokeFunction"]
    resources = [var.aggregator_function_arn]
  }
}

module "function" {
  source = "../function"

  function_name        = var.function_name
  description          = "FMA API (Django via Zappa)"
  package_bucket       = var.package_bucket
  package_path         = var.package_path
  handler              = var.handler
  memory_size          = var.memory_size
  timeout              = var.timeout
  reserved_concurrency = var.reserved_concurrency
  environment          = local.environment
  subnet_ids           = var.subnet_ids
  security_group_id    = var.security_group_id
  kms_key_arn          = var.kms_key_arn
  log_retention_days   = var.log_retention_days
  secret_arns          = var.secret_arns
  layers               = var.layers
  bucket_arn           = var.bucket_arn
  extra_policy_json    = data.aws_iam_policy_document.api.json
}

resource "aws_apigatewayv2_api" "this" {
  name          = var.function_name
  description   = "FMA API"
  protocol_type = "HTTP"
}

resource "aws_apigatewayv2_integration" "lambda" {
  api_id                 = aws_apigatewayv2_api.this.id
  integration_type       = "AWS_PROXY"
  integration_uri        = module.function.invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 30000 # HTTP APIs cannot wait longer; long work belongs to the aggregator
}

resource "aws_apigatewayv2_route" "default" {
  api_id    = aws_apigatewayv2_api.this.id
  route_key = "$default"
  target    = "integrations/${aws_apigatewayv2_integration.lambda.id}"
}

resource "aws_cloudwatch_log_group" "access" {
  name              = "/aws/apigateway/${var.function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.this.id
  name        = "$default"
  auto_deploy = true

  default_route_settings {
    throttling_burst_limit = var.throttling_burst_limit
    throttling_rate_limit  = var.throttling_rate_limit
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.access.arn
    format = jsonencode({
      requestId        = "$context.requestId"
      ip               = "$context.identity.sourceIp"
      requestTime      = "$context.requestTime"
      httpMethod       = "$context.httpMethod"
      path             = "$context.path"
      status           = "$context.status"
      responseLength   = "$context.responseLength"
      integrationError = "$context.integrationErrorMessage"
      latencyMs        = "$context.responseLatency"
    })
  }
}

resource "aws_lambda_permission" "api_gateway" {
  statement_id   = "AllowInvokeFromHttpApi"
  action         = "lambda:InvokeFunction"
  function_name  = module.function.function_name
  principal      = "apigateway.amazonaws.com"
  source_account = data.aws_caller_identity.current.account_id
  source_arn     = "${aws_apigatewayv2_api.this.execution_arn}/*"
}
