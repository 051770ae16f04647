# The whole platform with one demo backend: the image docker/Dockerfile builds with `--target demo` (the router
# image plus the demo) runs the router and, as `python -m whaleray_demo.backend`, the backend reached at
# https://<alb>/services/hello/. A real platform runs the router from the runtime image.

terraform {
  required_version = ">= 1.7"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
  }
}

variable "router_image" {
  description = "The image docker/Dockerfile builds with --target demo: the router with the demo backend."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate for HTTPS, or null for HTTP only."
  type        = string
  default     = null
}

module "platform" {
  source          = "../.."
  create_vpc      = true
  router_image    = var.router_image
  certificate_arn = var.certificate_arn
}

module "hello" {
  source                   = "../../modules/deployment"
  deployment_id            = "hello"
  namespace_id             = module.platform.namespace_id
  cluster_name             = module.platform.cluster_name
  capacity_provider_name   = module.platform.capacity_provider_name
  image                    = var.router_image
  entry_point              = ["python", "-m", "whaleray_demo.backend", "--name", "hello-backend", "--port", "3000"]
  subnet_ids               = module.platform.private_subnet_ids
  vpc_id                   = module.platform.vpc_id
  router_security_group_id = module.platform.router_security_group_id
  namespace_name           = module.platform.namespace_name
}

# The same backend asleep at zero tasks: the router wakes it on its first request, and it sleeps again after
# 15 minutes without one.
module "sleepy" {
  source                   = "../../modules/deployment"
  deployment_id            = "sleepy"
  namespace_id             = module.platform.namespace_id
  cluster_name             = module.platform.cluster_name
  capacity_provider_name   = module.platform.capacity_provider_name
  image                    = var.router_image
  entry_point              = ["python", "-m", "whaleray_demo.backend", "--name", "sleepy-backend", "--port", "3000"]
  subnet_ids               = module.platform.private_subnet_ids
  vpc_id                   = module.platform.vpc_id
  router_security_group_id = module.platform.router_security_group_id
  namespace_name           = module.platform.namespace_name
  wake_on_request          = { wake_to = 1, idle_minutes = 15 }
}

output "try" {
  description = "A request through the ALB and the router to the demo backend."
  value       = "curl -s http://${module.platform.alb_dns_name}/services/hello/"
}

output "try_sleepy" {
  description = "The first request wakes the sleeping deployment (a cold start of a task), then it is answered."
  value       = "curl -s http://${module.platform.alb_dns_name}/services/sleepy/"
}
