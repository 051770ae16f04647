output "dns_name" {
  description = "The name the router resolves for this deployment."
  value       = "${var.deployment_id}.${var.namespace_name}"
}

output "service_discovery_arn" {
  description = "The Cloud Map service."
  value       = aws_service_discovery_service.this.arn
}

output "ecs_service_name" {
  description = "The deployment's ECS service."
  value       = local.service.name
}

output "task_role_arn" {
  description = "The application's task role: attach more policies to it from outside."
  value       = aws_iam_role.task.arn
}

output "security_group_id" {
  description = "The deployment's security group (awsvpc); null in bridge mode."
  value       = one(aws_security_group.this[*].id)
}
