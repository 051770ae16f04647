variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "whaleray"
  validation {
    # The longest name built from it is the target group's "<name>-router", and target group names are at most
    # 32 characters of letters, digits and hyphens.
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,23}[a-z0-9])?$", var.name))
    error_message = "name must be 1-25 lower-case letters, digits or hyphens (not at either end): the target group \"<name>-router\" may have at most 32 characters."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
  nullable    = false
}

# --- network ---------------------------------------------------------------------------------------------

variable "create_vpc" {
  description = "Create a small two-AZ VPC (public subnets for the ALB, private subnets with a NAT gateway for the instances) instead of using vpc_id and the subnet ids."
  type        = bool
  default     = false
}

variable "vpc_cidr" {
  description = "CIDR of the VPC created when create_vpc is true."
  type        = string
  default     = "10.40.0.0/16"
}

variable "vpc_id" {
  description = "Existing VPC (when create_vpc is false)."
  type        = string
  default     = null
  validation {
    condition     = var.create_vpc || can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "No network: set create_vpc = true, or vpc_id (vpc-...) with public_subnet_ids and private_subnet_ids, two of each in two zones."
  }
}

variable "public_subnet_ids" {
  description = "Existing public subnets for the ALB, in at least two AZs (when create_vpc is false)."
  type        = list(string)
  default     = []
  nullable    = false
  validation {
    condition     = var.create_vpc || length(var.public_subnet_ids) >= 2
    error_message = "public_subnet_ids needs at least two subnets in two zones for the ALB (or set create_vpc = true)."
  }
}

variable "private_subnet_ids" {
  description = "Existing private subnets for the ECS instances (when create_vpc is false)."
  type        = list(string)
  default     = []
  nullable    = false
  validation {
    condition     = var.create_vpc || length(var.private_subnet_ids) >= 2
    error_message = "private_subnet_ids needs at least two subnets in two zones for the instances (or set create_vpc = true)."
  }
}

# --- cluster ---------------------------------------------------------------------------------------------

variable "instance_type" {
  description = "EC2 instance type of the ECS cluster."
  type        = string
  default     = "t3.small"
}

variable "asg_min_size" {
  # Two, not the original 1: with one instance both router tasks share it and its zone, and one instance
  # failure takes all of /services/* down. Two instances over two zones let the spread placement work.
  description = "Fewest ECS instances: at least 2, so the router tasks can sit on two instances in two zones."
  type        = number
  default     = 2
  validation {
    condition     = var.asg_min_size >= 2
    error_message = "asg_min_size must be at least 2: with one instance, one instance failure takes every router down."
  }
}

variable "nat_gateway_per_zone" {
  description = "With create_vpc: a NAT gateway in each zone (image pulls and AWS APIs survive a zone), not one shared."
  type        = bool
  default     = true
}

variable "create_ecs_service_linked_role" {
  description = "Create the ECS service-linked role (an account's first ECS use needs it); false where it exists already."
  type        = bool
  default     = true
}

variable "asg_max_size" {
  description = "Most ECS instances."
  type        = number
  default     = 10
}

variable "capacity_target_percent" {
  description = "Target capacity of the capacity provider's managed scaling."
  type        = number
  default     = 90
}

# --- ALB -------------------------------------------------------------------------------------------------

variable "certificate_arn" {
  description = "ACM certificate for an HTTPS listener; when set, HTTP redirects to HTTPS."
  type        = string
  default     = null
}

variable "alb_idle_timeout" {
  description = "ALB idle timeout in seconds; must stay below the router's client keep-alive timeout (75 s)."
  type        = number
  default     = 60
}

variable "router_slow_start" {
  description = "Seconds a new router task takes to get its full share of requests (ALB slow start, 30-900; 0 turns it off): its DNS cache starts empty and fills at --dns-max-qps."
  type        = number
  default     = 60
  validation {
    condition     = var.router_slow_start == 0 || (var.router_slow_start >= 30 && var.router_slow_start <= 900)
    error_message = "router_slow_start must be 0 or 30-900 seconds (the ALB's range)."
  }
}

variable "deregistration_delay" {
  description = "Seconds the ALB lets requests in flight finish on a deregistered router; ECS sends SIGTERM after it."
  type        = number
  default     = 20
}

variable "health_check_interval" {
  description = "Seconds between ALB health checks of /health on a router."
  type        = number
  default     = 5
}

variable "health_check_unhealthy_threshold" {
  description = "Failed health checks before the ALB stops routing to a router."
  type        = number
  default     = 2
}

variable "alb_access_logs_bucket" {
  description = "S3 bucket for ALB access logs; null turns them off."
  type        = string
  default     = null
}

# --- router ----------------------------------------------------------------------------------------------

variable "router_image" {
  description = "The router's container image (docker/Dockerfile), by tag or digest; null: this stack's ECR repository at router_image_tag."
  type        = string
  default     = null
}

variable "router_image_tag" {
  description = "The tag of this stack's ECR repository the router runs when router_image is null (`make push` pushes the version)."
  type        = string
  default     = "0.1.0"
}

variable "ecr_keep_images" {
  description = "How many images the router's ECR repository keeps (the newest); older ones expire."
  type        = number
  default     = 30

  validation {
    condition     = var.ecr_keep_images >= 2
    error_message = "ecr_keep_images must keep at least the running image and one to roll back to."
  }
}

variable "ecr_untagged_days" {
  description = "Days after which untagged images in the router's ECR repository expire."
  type        = number
  default     = 7
}

variable "ecr_kms_key_arn" {
  description = "A customer-managed KMS key for the router's ECR repository; null: the AWS-managed key."
  type        = string
  default     = null
}

variable "ecr_force_delete" {
  description = "Let terraform destroy delete the ECR repository with its images (test stacks); off, destroy fails while images remain."
  type        = bool
  default     = false
}

variable "router_network_mode" {
  description = "bridge (dynamic host ports, as the platform runs today) or awsvpc (an ENI per task)."
  type        = string
  default     = "bridge"

  validation {
    condition     = contains(["bridge", "awsvpc"], var.router_network_mode)
    error_message = "router_network_mode must be bridge or awsvpc."
  }
}

variable "deployments_network_mode" {
  description = "How deployments run: awsvpc (A records, port backend_port) or bridge (SRV records with dynamic host ports: the router runs with --discovery srv and may reach 32768-65535 on the instances)."
  type        = string
  default     = "awsvpc"

  validation {
    condition     = contains(["awsvpc", "bridge"], var.deployments_network_mode)
    error_message = "deployments_network_mode must be awsvpc or bridge (modules/deployment's network_mode)."
  }
}

variable "router_cpu" {
  description = "CPU units of a router task (1024 = one vCPU); --workers auto follows it."
  type        = number
  default     = 512
}

variable "router_memory" {
  description = "Memory (MiB) of a router task."
  type        = number
  default     = 512
}

variable "router_min_tasks" {
  description = "Fewest router tasks."
  type        = number
  default     = 2
}

variable "router_max_tasks" {
  description = "Most router tasks."
  type        = number
  default     = 20
}

variable "router_cpu_target" {
  description = "Target average CPU (%) of the router service's scaling policy."
  type        = number
  default     = 60
}

variable "router_requests_per_target" {
  description = "Target ALB requests per router task per minute for the request-count scaling policy."
  type        = number
  default     = 60000
}

variable "router_environment" {
  description = "WHALERAY_* variables merged over those of task-definition.json."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "log_retention_days" {
  description = "Days the router's CloudWatch logs are kept."
  type        = number
  default     = 30
}

variable "log_kms_key_arn" {
  description = "KMS key encrypting the router's log group; null uses CloudWatch's default encryption."
  type        = string
  default     = null
}

variable "alarm_actions" {
  description = "ARNs notified by the CloudWatch alarms (e.g. an SNS topic)."
  type        = list(string)
  default     = []
  nullable    = false
}

variable "namespace" {
  description = "Cloud Map private DNS namespace the deployments register in."
  type        = string
  default     = "whaleray.local"
}

variable "backend_port" {
  description = "Port of every deployment's backend (the router's --upstream-port)."
  type        = number
  default     = 3000
}

variable "wake_on_request" {
  description = "Let the router wake deployments asleep at zero tasks on their first request (only those that opt in: modules/deployment's wake_on_request). Grants the router's task role exactly that (wake.tf)."
  type        = bool
  default     = true
}
