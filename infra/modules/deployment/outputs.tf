output "dns_name" {
  description = "The name the router resolves for this deployment."
  value       = "${var.deployment_id}.<namespace>"
}

output "service_discovery_arn" {
  description = "The Cloud Map service."
  value       = aws_service_discovery_service.this.arn
}

output "ecs_service_name" {
  description = "The deployment's ECS service."
  value       = aws_ecs_service.this.name
}
