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
