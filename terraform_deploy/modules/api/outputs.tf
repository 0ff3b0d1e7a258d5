output "api_url" {
  description = "Base URL of the HTTP API."
  value       = aws_apigatewayv2_api.this.api_endpoint
}

output "api_id" {
  description = "Id of the HTTP API (dimension of its CloudWatch metrics)."
  value       = aws_apigatewayv2_api.this.id
}

output "function_name" {
  description = "Name of the API function."
  value       = module.function.function_name
}

output "log_group_name" {
  description = "Log group of the API function."
  value       = module.function.log_group_name
}

output "access_log_group_name" {
  description = "Log group of the HTTP API's access log (one JSON line per request, with its status)."
  value       = aws_cloudwatch_log_group.access.name
}
