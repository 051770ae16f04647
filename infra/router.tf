# The router: task definition rendered from task-definition.json, the ECS service, its scaling, its network.

locals {
  # task-definition.json is the one source of the container definition (environment, timings, health check,
  # ulimits); Terraform fills in what only it knows. A pytest validates the JSON against botocore's model and
  # feeds its environment to the router's real settings parser.
  task_definition_file = jsondecode(file("${path.module}/task-definition.json"))
  container_template   = local.task_definition_file.containerDefinitions[0]
  router_environment = merge(
    { for variable in local.container_template.environment : variable.name => variable.value },
    { WHALERAY_NAMESPACE = var.namespace, WHALERAY_UPSTREAM_PORT = tostring(var.backend_port) },
    # Bridge-mode deployments register SRV records (address and dynamic host port); A records carry no port.
    var.deployments_network_mode == "bridge" ? { WHALERAY_DISCOVERY = "srv" } : {},
    local.wake_environment, # wake.tf
    var.router_environment,
  )
  router_port = tonumber(local.router_environment["WHALERAY_PORT"])
  # bridge: the ALB reaches the ephemeral host ports; awsvpc: the task's own port.
  router_target_port_range = var.router_network_mode == "bridge" ? [32768, 65535] : [local.router_port, local.router_port]

  router_image = coalesce(var.router_image, "${aws_ecr_repository.router.repository_url}:${var.router_image_tag}")

  router_container = merge(local.container_template, {
    image       = local.router_image
    environment = [for name in sort(keys(local.router_environment)) : { name = name, value = local.router_environment[name] }]
    portMappings = [{
      name          = "proxy"
      containerPort = local.router_port
      hostPort      = var.router_network_mode == "bridge" ? 0 : local.router_port
      protocol      = "tcp"
      appProtocol   = "http"
    }]
    logConfiguration = {
      logDriver = "awslogs"
      options = merge(local.container_template.logConfiguration.options, {
        "awslogs-group"  = aws_cloudwatch_log_group.router.name
        "awslogs-region" = data.aws_region.current.name
      })
    }
  })
}

resource "aws_cloudwatch_log_group" "router" {
  #checkov:skip=CKV_AWS_338:Retention is the operator's cost choice (log_retention_days): access logs are one line per request.
  name              = "/ecs/${var.name}-router"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}

resource "aws_ecs_task_definition" "router" {
  family                   = "${var.name}-router"
  requires_compatibilities = ["EC2"]
  network_mode             = var.router_network_mode
  cpu                      = var.router_cpu
  memory                   = var.router_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode([local.router_container])
  tags                     = local.tags
}

resource "aws_ecs_service" "router" {
  name                               = "${var.name}-router"
  cluster                            = aws_ecs_cluster.this.id
  task_definition                    = aws_ecs_task_definition.router.arn
  desired_count                      = var.router_min_tasks
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 30
  enable_ecs_managed_tags            = true
  propagate_tags                     = "SERVICE"
  capacity_provider_strategy {
    capacity_provider = aws_ecs_capacity_provider.this.name
    weight            = 1
  }
  # Zones first, so one instance or one zone never holds every router; then pack by memory.
  ordered_placement_strategy {
    type  = "spread"
    field = "attribute:ecs.availability-zone"
  }
  ordered_placement_strategy {
    type  = "binpack"
    field = "memory"
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.router.arn
    container_name   = local.router_container.name
    container_port   = local.router_port
  }
  dynamic "network_configuration" {
    for_each = var.router_network_mode == "awsvpc" ? [1] : []
    content {
      subnets         = local.private_subnet_ids
      security_groups = [aws_security_group.router_tasks[0].id]
    }
  }
  lifecycle {
    ignore_changes = [desired_count] # Application Auto Scaling owns it
  }
  depends_on = [aws_lb_listener_rule.services, aws_ecs_cluster_capacity_providers.this]
  tags       = local.tags
}

# --- scaling: 2-20 tasks, on CPU and on requests per target -------------------------------------------------

resource "aws_appautoscaling_target" "router" {
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.router.name}"
  min_capacity       = var.router_min_tasks
  max_capacity       = var.router_max_tasks
}

resource "aws_appautoscaling_policy" "router_cpu" {
  name               = "${var.name}-router-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.router.service_namespace
  scalable_dimension = aws_appautoscaling_target.router.scalable_dimension
  resource_id        = aws_appautoscaling_target.router.resource_id
  target_tracking_scaling_policy_configuration {
    target_value       = var.router_cpu_target
    scale_in_cooldown  = 120
    scale_out_cooldown = 30
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "router_requests" {
  name               = "${var.name}-router-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.router.service_namespace
  scalable_dimension = aws_appautoscaling_target.router.scalable_dimension
  resource_id        = aws_appautoscaling_target.router.resource_id
  target_tracking_scaling_policy_configuration {
    target_value       = var.router_requests_per_target
    scale_in_cooldown  = 120
    scale_out_cooldown = 30
    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.this.arn_suffix}/${aws_lb_target_group.router.arn_suffix}"
    }
  }
}

# --- network: least privilege --------------------------------------------------------------------------------

resource "aws_security_group" "instances" {
  name        = "${var.name}-ecs-instances"
  description = "ECS instances: router host ports from the ALB only; out to the VPC and HTTPS"
  vpc_id      = local.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "instances_from_alb" {
  count                        = var.router_network_mode == "bridge" ? 1 : 0
  security_group_id            = aws_security_group.instances.id
  description                  = "Dynamic host ports of the router tasks, from the ALB"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = 32768
  to_port                      = 65535
}

resource "aws_vpc_security_group_egress_rule" "instances_to_backends" {
  security_group_id = aws_security_group.instances.id
  description       = "Deployments' backends in the VPC (bridge-mode router tasks share this group)"
  cidr_ipv4         = local.vpc_cidr
  ip_protocol       = "tcp"
  from_port         = var.backend_port
  to_port           = var.backend_port
}

resource "aws_vpc_security_group_egress_rule" "instances_https" {
  security_group_id = aws_security_group.instances.id
  description       = "HTTPS to the ECS, ECR, CloudWatch and SSM endpoints"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_security_group" "router_tasks" {
  count       = var.router_network_mode == "awsvpc" ? 1 : 0
  name        = "${var.name}-router-tasks"
  description = "Router tasks in awsvpc mode: the proxy port from the ALB; out to backends and HTTPS"
  vpc_id      = local.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "router_tasks_from_alb" {
  count                        = var.router_network_mode == "awsvpc" ? 1 : 0
  security_group_id            = aws_security_group.router_tasks[0].id
  description                  = "The proxy port, from the ALB"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = local.router_port
  to_port                      = local.router_port
}

resource "aws_vpc_security_group_egress_rule" "router_tasks_to_backends" {
  count             = var.router_network_mode == "awsvpc" ? 1 : 0
  security_group_id = aws_security_group.router_tasks[0].id
  description       = "Deployments' backends in the VPC"
  cidr_ipv4         = local.vpc_cidr
  ip_protocol       = "tcp"
  from_port         = var.backend_port
  to_port           = var.backend_port
}

resource "aws_vpc_security_group_egress_rule" "router_tasks_https" {
  count             = var.router_network_mode == "awsvpc" ? 1 : 0
  security_group_id = aws_security_group.router_tasks[0].id
  description       = "HTTPS to AWS endpoints"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# --- bridge-mode deployments: their dynamic host ports, from the routers ------------------------------------

locals {
  router_group_id = var.router_network_mode == "awsvpc" ? aws_security_group.router_tasks[0].id : aws_security_group.instances.id
}

resource "aws_vpc_security_group_egress_rule" "routers_to_host_ports" {
  count                        = var.deployments_network_mode == "bridge" ? 1 : 0
  security_group_id            = local.router_group_id
  description                  = "Bridge-mode deployments' dynamic host ports on the instances"
  referenced_security_group_id = aws_security_group.instances.id
  ip_protocol                  = "tcp"
  from_port                    = 32768
  to_port                      = 65535
}

resource "aws_vpc_security_group_ingress_rule" "host_ports_from_routers" {
  count                        = var.deployments_network_mode == "bridge" ? 1 : 0
  security_group_id            = aws_security_group.instances.id
  description                  = "Bridge-mode deployments' dynamic host ports, from the routers"
  referenced_security_group_id = local.router_group_id
  ip_protocol                  = "tcp"
  from_port                    = 32768
  to_port                      = 65535
}
