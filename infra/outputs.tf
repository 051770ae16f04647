output "alb_dns_name" {
  description = "Where clients reach the platform: http(s)://<alb_dns_name>/services/<deploymentId>/..."
  value       = aws_lb.this.dns_name
}

# Both wait for the capacity provider's association with the cluster: a service created from them before it
# fails ("capacity provider is not associated with the cluster").
output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster_capacity_providers.this.cluster_name
}

output "capacity_provider_name" {
  description = "The EC2 capacity provider deployments should use."
  value       = one(aws_ecs_cluster_capacity_providers.this.capacity_providers)
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

output "alb_arn" {
  description = "The ALB, to attach a WAF web ACL or more listeners from outside."
  value       = aws_lb.this.arn
}

output "alb_security_group_id" {
  description = "The ALB's security group."
  value       = aws_security_group.alb.id
}

output "http_listener_arn" {
  description = "The port-80 listener (forwards, or redirects to HTTPS when a certificate is given)."
  value       = aws_lb_listener.http.arn
}

output "https_listener_arn" {
  description = "The port-443 listener, when a certificate is given; null otherwise."
  value       = one(aws_lb_listener.https[*].arn)
}

output "router_target_group_arn" {
  description = "The routers' target group."
  value       = aws_lb_target_group.router.arn
}

output "router_tasks_security_group_id" {
  description = "With router_network_mode = awsvpc: the router tasks' security group (backends must admit it); null in bridge mode, where the instances' group is the one."
  value       = one(aws_security_group.router_tasks[*].id)
}

output "router_security_group_id" {
  description = "The group the routers connect from, whatever router_network_mode: what a deployment's security group must admit (modules/deployment's router_security_group_id)."
  value       = local.router_group_id
}

output "ecr_repository_url" {
  description = "The router's ECR repository: `make push ECR_REPOSITORY=<this>`; the task definition runs <this>:router_image_tag unless router_image is set."
  value       = aws_ecr_repository.router.repository_url
}

output "router_image" {
  description = "The image the router's task definition runs."
  value       = local.router_image
}
