output "address" {
  description = "Host name of the database."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port of the database."
  value       = aws_db_instance.this.port
}

output "endpoint" {
  description = "host:port of the database."
  value       = aws_db_instance.this.endpoint
}

output "db_name" {
  description = "Name of the database."
  value       = aws_db_instance.this.db_name
}

output "security_group_id" {
  description = "Security group of the database."
  value       = aws_security_group.db.id
}

output "master_user_secret_arn" {
  description = "ARN of the secret RDS keeps the master user name and password in, and rotates."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "instance_id" {
  description = "Identifier of the instance (the DBInstanceIdentifier of its CloudWatch metrics)."
  value       = aws_db_instance.this.identifier
}

output "resource_id" {
  description = "Unique id of this instance: a database created anew gets a new one."
  value       = aws_db_instance.this.resource_id
}
