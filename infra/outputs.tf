output "alb_dns_name" {
  description = "Where clients reach the platform: http(s)://<alb_dns_name>/services/<deploymentId>/..."
  value       = aws_lb.this.dns_name
}

output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "capacity_provider_name" {
  description = "The EC2 capacity provider deployments should use."
  value       = aws_ecs_capacity_provider.this.name
}

output "namespace_id" {
  description = "The Cloud Map namespace deployments register in (input of modules/deployment)."
  value       = aws_service_discovery_private_dns_namespace.this.id
}

output "namespace_name" {
  description = "The Cloud Map namespace's DNS name."
  value       = aws_service_discovery_private_dns_namespace.this.name
}

output "vpc_id" {
  description = "The VPC (created or given)."
  value       = local.vpc_id
}

output "private_subnet_ids" {
  description = "Subnets of the ECS instances (and awsvpc tasks)."
  value       = local.private_subnet_ids
}

output "instances_security_group_id" {
  description = "Security group of the ECS instances; deployments' backends must accept the routers from it."
  value       = aws_security_group.instances.id
}

output "router_service_name" {
  description = "The router's ECS service."
  value       = aws_ecs_service.router.name
}

output "router_container_definition" {
  description = "The router's rendered container definition (what task-definition.json becomes)."
  value       = local.router_container
}
