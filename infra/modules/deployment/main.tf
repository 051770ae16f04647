# A deployment: a backend service registered in Cloud Map so the router reaches it as
# <deployment_id>.<namespace>. awsvpc: A records, TTL 10, MULTIVALUE routing, health from ECS. bridge: SRV
# records (address and dynamic host port) for a router run with --discovery srv.

data "aws_region" "current" {}

locals {
  tags   = merge({ Project = "whaleray", Deployment = var.deployment_id, ManagedBy = "terraform" }, var.tags)
  awsvpc = var.network_mode == "awsvpc"
  wake   = var.wake_on_request != null
  # The opt-in tag: its value is the task count the router wakes the deployment to.
  wake_tags = local.wake ? { "whaleray:wake" = tostring(var.wake_on_request.wake_to) } : {}
  service   = one(concat(aws_ecs_service.this[*], aws_ecs_service.sleeping[*]))
}

resource "aws_service_discovery_service" "this" {
  name = var.deployment_id
  dns_config {
    namespace_id   = var.namespace_id
    routing_policy = "MULTIVALUE" # up to 8 healthy addresses per answer: the router spreads over them
    dns_records {
      type = local.awsvpc ? "A" : "SRV"
      ttl  = 10
    }
  }
  health_check_custom_config {
    failure_threshold = 1 # ECS reports task health to Cloud Map
  }
  tags = merge(local.tags, local.wake_tags) # the router reads the opt-in here (its catalogue)
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:Log encryption with a customer key is the platform's choice; CloudWatch encrypts by default.
  #checkov:skip=CKV_AWS_338:Retention is the deployment owner's cost choice (log_retention_days).
  name              = "/ecs/whaleray-deployments/${var.deployment_id}"
  retention_in_days = var.log_retention_days
  tags              = local.tags
}

resource "aws_iam_role" "execution" {
  name_prefix = "wr-${substr(var.deployment_id, 0, 20)}-exec-"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "ecs-tasks.amazonaws.com" } }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# The application's own AWS identity (empty unless task_role_policy_arns grants something).
resource "aws_iam_role" "task" {
  name_prefix = "wr-${substr(var.deployment_id, 0, 20)}-task-"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "ecs-tasks.amazonaws.com" } }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "task" {
  for_each   = toset(var.task_role_policy_arns)
  role       = aws_iam_role.task.name
  policy_arn = each.value
}

resource "aws_ecs_task_definition" "this" {
  family                   = "whaleray-${var.deployment_id}"
  requires_compatibilities = ["EC2"]
  network_mode             = var.network_mode
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions = jsonencode([{
    name                   = "backend"
    image                  = var.image
    entryPoint             = var.entry_point
    essential              = true
    readonlyRootFilesystem = var.read_only_root_filesystem
    healthCheck            = var.health_check_command == null ? null : { command = var.health_check_command, interval = 10, timeout = 5, retries = 3, startPeriod = 30 }
    portMappings           = [{ containerPort = var.container_port, hostPort = local.awsvpc ? var.container_port : 0, protocol = "tcp" }]
    environment            = [for name in sort(keys(var.environment)) : { name = name, value = var.environment[name] }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.this.name
        "awslogs-region"        = data.aws_region.current.name
        "awslogs-stream-prefix" = var.deployment_id
      }
    }
  }])
  tags = local.tags
}

resource "aws_security_group" "this" {
  count       = local.awsvpc ? 1 : 0
  name        = "whaleray-${var.deployment_id}"
  description = "Deployment ${var.deployment_id}: its port from the routers only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "from_routers" {
  count                        = local.awsvpc ? 1 : 0
  security_group_id            = aws_security_group.this[0].id
  description                  = "The backend port, from the routers"
  referenced_security_group_id = var.router_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
}

resource "aws_vpc_security_group_egress_rule" "https" {
  count             = local.awsvpc && var.egress_cidr_ipv4 == null ? 1 : 0
  security_group_id = aws_security_group.this[0].id
  description       = "HTTPS out (AWS endpoints, external APIs)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "out" {
  #checkov:skip=CKV_AWS_382:An application reaches its database, queue and APIs on their own ports; egress_cidr_ipv4 narrows it.
  count             = local.awsvpc && var.egress_cidr_ipv4 != null ? 1 : 0
  security_group_id = aws_security_group.this[0].id
  description       = "Out to the application's dependencies, any port"
  cidr_ipv4         = var.egress_cidr_ipv4
  ip_protocol       = "-1"
}

# The service, in one of two forms: `this`, whose task count Terraform owns (desired_count), or, with
# wake_on_request, `sleeping`, whose count the router raises from zero and Application Auto Scaling sets back
# to zero when idle (wake.tf): Terraform sets it at creation and leaves it alone after.
resource "aws_ecs_service" "this" {
  count           = local.wake ? 0 : 1
  name            = "whaleray-${var.deployment_id}"
  cluster         = var.cluster_name
  task_definition = aws_ecs_task_definition.this.arn
  desired_count   = var.desired_count
  capacity_provider_strategy {
    capacity_provider = var.capacity_provider_name
    weight            = 1
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  service_registries {
    registry_arn   = aws_service_discovery_service.this.arn
    container_name = local.awsvpc ? null : "backend"
    container_port = local.awsvpc ? null : var.container_port
  }
  dynamic "network_configuration" {
    for_each = local.awsvpc ? [1] : []
    content {
      subnets         = var.subnet_ids
      security_groups = [aws_security_group.this[0].id]
    }
  }
  tags = local.tags
}

moved {
  from = aws_ecs_service.this
  to   = aws_ecs_service.this[0]
}

resource "aws_ecs_service" "sleeping" {
  count           = local.wake ? 1 : 0
  name            = "whaleray-${var.deployment_id}"
  cluster         = var.cluster_name
  task_definition = aws_ecs_task_definition.this.arn
  desired_count   = 0 # asleep until the first request
  capacity_provider_strategy {
    capacity_provider = var.capacity_provider_name
    weight            = 1
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  service_registries {
    registry_arn   = aws_service_discovery_service.this.arn
    container_name = local.awsvpc ? null : "backend"
    container_port = local.awsvpc ? null : var.container_port
  }
  dynamic "network_configuration" {
    for_each = local.awsvpc ? [1] : []
    content {
      subnets         = var.subnet_ids
      security_groups = [aws_security_group.this[0].id]
    }
  }
  tags = merge(local.tags, local.wake_tags) # IAM lets the router wake only services with this tag
  lifecycle {
    ignore_changes = [desired_count]
  }
}
