variable "deployment_id" {
  description = "The deployment's id: one DNS label, reached at /services/<deployment_id>/ through the router."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.deployment_id))
    error_message = "deployment_id must be one lower-case DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')."
  }
}

variable "namespace_id" {
  description = "The Cloud Map namespace (output namespace_id of the root module)."
  type        = string
}

variable "cluster_name" {
  description = "The ECS cluster."
  type        = string
}

variable "capacity_provider_name" {
  description = "The EC2 capacity provider."
  type        = string
}

variable "image" {
  description = "The backend's container image; it must listen on container_port."
  type        = string
}

variable "entry_point" {
  description = "Overrides the image's entry point (null keeps it)."
  type        = list(string)
  default     = null
}

variable "container_port" {
  description = "Port the backend listens on; the router dials it (its --upstream-port) in awsvpc mode."
  type        = number
  default     = 3000
}

variable "network_mode" {
  description = "awsvpc (A records, the router's default discovery) or bridge (SRV records with host ports: run the router with --discovery srv)."
  type        = string
  default     = "awsvpc"

  validation {
    condition     = contains(["awsvpc", "bridge"], var.network_mode)
    error_message = "network_mode must be awsvpc or bridge."
  }
}

variable "subnet_ids" {
  description = "Subnets of the tasks (awsvpc)."
  type        = list(string)
  default     = []
  nullable    = false
}

variable "router_security_group_id" {
  description = "The routers' security group (router_security_group_id of the root module): the only allowed client."
  type        = string
}

variable "namespace_name" {
  description = "The Cloud Map namespace's DNS name (namespace_name of the root module), for the dns_name output."
  type        = string
}

variable "read_only_root_filesystem" {
  description = "Run the container with a read-only root filesystem (off by default: many applications write to /tmp or a cache)."
  type        = bool
  default     = false
}

variable "egress_cidr_ipv4" {
  description = "Where the backend may connect (databases, queues, external APIs), any port; null allows nothing out but HTTPS."
  type        = string
  default     = "0.0.0.0/0"
}

variable "task_role_policy_arns" {
  description = "IAM policies the application's task role gets (its AWS permissions); none by default."
  type        = list(string)
  default     = []
  nullable    = false
}

variable "health_check_command" {
  description = "Container health check, e.g. [\"CMD-SHELL\", \"wget -qO- http://127.0.0.1:3000/health || exit 1\"]; null: ECS watches the process only."
  type        = list(string)
  default     = null
}

variable "vpc_id" {
  description = "The VPC (awsvpc)."
  type        = string
}

variable "desired_count" {
  description = "Tasks of the deployment; Cloud Map answers with up to 8 healthy addresses."
  type        = number
  default     = 2
}

variable "cpu" {
  description = "CPU units of a task."
  type        = number
  default     = 256
}

variable "memory" {
  description = "Memory (MiB) of a task."
  type        = number
  default     = 256
}

variable "environment" {
  description = "Environment variables of the backend container."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "log_retention_days" {
  description = "Days the deployment's logs are kept."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "wake_on_request" {
  description = "Sleep at zero tasks when idle and wake on the first request, which the router holds meanwhile (wake.tf): the task count to wake to, and the minutes without a request or one in flight, across every router, before sleeping (also the least time awake). null: always running at desired_count."
  type = object({
    wake_to      = optional(number, 1)
    idle_minutes = optional(number, 15)
  })
  default = null
  validation {
    condition     = var.wake_on_request == null || try(var.wake_on_request.wake_to >= 1 && var.wake_on_request.wake_to <= 10, false)
    error_message = "wake_to must be 1-10 (the router wakes to at most 10 tasks)."
  }
  validation {
    condition     = var.wake_on_request == null || try(var.wake_on_request.idle_minutes >= 1 && var.wake_on_request.idle_minutes <= 1440, false)
    error_message = "idle_minutes must be 1-1440: a CloudWatch alarm evaluates at most a day of one-minute periods."
  }
}
