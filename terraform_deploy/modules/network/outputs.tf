output "vpc_id" {
  description = "Id of the VPC."
  value       = aws_vpc.this.id
}

output "private_subnet_ids" {
  description = "Ids of the private subnets, one per availability zone."
  value       = aws_subnet.private[*].id
}

output "api_security_group_id" {
  description = "Security group of the API function."
  value       = aws_security_group.function["api"].id
}

output "aggregator_security_group_id" {
  description = "Security group of the aggregator function."
  value       = aws_security_group.function["aggregator"].id
}
