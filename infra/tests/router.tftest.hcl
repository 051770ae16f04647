# Plan-level assertions with a mocked AWS provider: no account, no network.

mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"sts:AssumeRole\",\"Principal\":{\"Service\":\"ecs-tasks.amazonaws.com\"}}]}"
    }
  }
  override_data {
    target = data.aws_availability_zones.available
    values = { names = ["us-east-1a", "us-east-1b", "us-east-1c"] }
  }
  override_data {
    target = data.aws_ssm_parameter.ecs_ami
    values = { value = "ami-0123456789abcdef0" }
  }
  override_data {
    target = data.aws_region.current
    values = { name = "us-east-1" }
  }
  override_data {
    target = data.aws_caller_identity.current
    values = { account_id = "123456789012" }
  }
  override_data {
    target = data.aws_vpc.existing
    values = { cidr_block = "10.20.0.0/16" }
  }
}

variables {
  router_image       = "123456789012.dkr.ecr.us-east-1.amazonaws.com/whaleray-router:0.1.0"
  vpc_id             = "vpc-0123456789abcdef0"
  public_subnet_ids  = ["subnet-a", "subnet-b"]
  private_subnet_ids = ["subnet-c", "subnet-d"]
}

run "routes_services_to_the_routers" {
  command = plan

  assert {
    condition     = contains(flatten([for c in aws_lb_listener_rule.services.condition : [for p in c.path_pattern : p.values]]), "/services/*")
    error_message = "the listener rule must forward /services/*"
  }
  assert {
    condition     = one([for a in aws_lb_listener_rule.services.action : a.type]) == "forward"
    error_message = "the rule forwards to the router target group"
  }
  assert {
    condition     = aws_lb_target_group.router.health_check[0].path == "/health" && aws_lb_target_group.router.health_check[0].matcher == "200"
    error_message = "the target group checks /health"
  }
  assert {
    condition     = aws_lb.this.idle_timeout < tonumber(output.router_container_definition.environment[index(output.router_container_definition.environment[*].name, "WHALERAY_CLIENT_KEEPALIVE_TIMEOUT")].value)
    error_message = "the ALB idle timeout must stay below the router's client keep-alive timeout"
  }
  assert {
    condition     = aws_lb_target_group.router.target_type == "instance"
    error_message = "bridge mode registers instances and their dynamic ports"
  }
}

run "scales_2_to_20_on_cpu_and_requests" {
  command = plan

  assert {
    condition     = aws_appautoscaling_target.router.min_capacity == 2 && aws_appautoscaling_target.router.max_capacity == 20
    error_message = "the router service scales between 2 and 20 tasks"
  }
  assert {
    condition     = aws_appautoscaling_policy.router_cpu.target_tracking_scaling_policy_configuration[0].target_value == 60
    error_message = "CPU target tracking at 60 %"
  }
  assert {
    condition     = aws_appautoscaling_policy.router_cpu.target_tracking_scaling_policy_configuration[0].predefined_metric_specification[0].predefined_metric_type == "ECSServiceAverageCPUUtilization"
    error_message = "the CPU policy tracks ECSServiceAverageCPUUtilization"
  }
  assert {
    condition     = aws_appautoscaling_policy.router_requests.target_tracking_scaling_policy_configuration[0].predefined_metric_specification[0].predefined_metric_type == "ALBRequestCountPerTarget"
    error_message = "a second policy tracks ALBRequestCountPerTarget"
  }
  assert {
    condition     = aws_autoscaling_group.ecs.min_size == 2 && aws_autoscaling_group.ecs.max_size == 10
    error_message = "the instances scale between 2 and 10"
  }
  assert {
    condition     = aws_ecs_capacity_provider.this.auto_scaling_group_provider[0].managed_scaling[0].target_capacity == 90 && aws_ecs_capacity_provider.this.auto_scaling_group_provider[0].managed_termination_protection == "DISABLED"
    error_message = "managed scaling at 90 %, termination protection off"
  }
  assert {
    condition     = aws_ecs_service.router.deployment_minimum_healthy_percent == 100 && aws_ecs_service.router.deployment_circuit_breaker[0].rollback
    error_message = "min healthy 100 %, circuit breaker with rollback"
  }
}

run "runs_the_router_as_task_definition_json_says" {
  command = plan

  assert {
    condition     = aws_service_discovery_private_dns_namespace.this.name == "whaleray.local"
    error_message = "the Cloud Map namespace is whaleray.local"
  }
  assert {
    condition     = output.router_container_definition.portMappings[0].containerPort == 8080 && output.router_container_definition.portMappings[0].hostPort == 0
    error_message = "the proxy port 8080 on a dynamic host port (bridge)"
  }
  assert {
    condition     = output.router_container_definition.environment[index(output.router_container_definition.environment[*].name, "WHALERAY_RESOLVER")].value == "169.254.169.253"
    error_message = "the router resolves through the VPC resolver"
  }
  assert {
    condition     = output.router_container_definition.environment[index(output.router_container_definition.environment[*].name, "WHALERAY_UPSTREAM_PORT")].value == "3000"
    error_message = "backends on port 3000"
  }
  assert {
    condition     = output.router_container_definition.readonlyRootFilesystem && output.router_container_definition.user == "10001:10001"
    error_message = "read-only root filesystem, non-root user"
  }
  assert {
    condition     = output.router_container_definition.logConfiguration.options["awslogs-group"] == "/ecs/whaleray-router" && output.router_container_definition.logConfiguration.options["awslogs-region"] == "us-east-1"
    error_message = "awslogs to the router's log group"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.router.container_definitions)[0].image == var.router_image
    error_message = "the task definition runs the given image"
  }
}

run "awsvpc_mode" {
  command = plan
  variables {
    router_network_mode = "awsvpc"
  }

  assert {
    condition     = aws_lb_target_group.router.target_type == "ip" && output.router_container_definition.portMappings[0].hostPort == 8080
    error_message = "awsvpc registers task IPs on the container port"
  }
  assert {
    condition     = length(aws_security_group.router_tasks) == 1 && length(aws_vpc_security_group_ingress_rule.instances_from_alb) == 0
    error_message = "awsvpc tasks get their own security group"
  }
}

run "https_when_a_certificate_is_given" {
  command = plan
  variables {
    certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/abc"
  }

  assert {
    condition     = length(aws_lb_listener.https) == 1 && one(aws_lb_listener.http.default_action).type == "redirect"
    error_message = "HTTPS listener, HTTP redirects to it"
  }
}

run "creates_a_vpc_when_asked" {
  command = plan
  variables {
    create_vpc         = true
    vpc_id             = null
    public_subnet_ids  = []
    private_subnet_ids = []
  }

  assert {
    condition     = length(aws_subnet.public) == 2 && length(aws_subnet.private) == 2
    error_message = "two public and two private subnets"
  }
  assert {
    condition     = aws_subnet.public[0].availability_zone != aws_subnet.public[1].availability_zone
    error_message = "in two availability zones"
  }
}

run "survives_an_instance_or_a_zone" {
  command = plan

  assert {
    condition     = [for s in aws_ecs_service.router.ordered_placement_strategy : "${s.type}:${s.field}"] == ["spread:attribute:ecs.availability-zone", "binpack:memory"]
    error_message = "router tasks spread over zones first, then binpack memory"
  }
  assert {
    condition     = aws_autoscaling_group.ecs.min_size >= 2
    error_message = "at least two instances, so two router tasks need not share one"
  }
  assert {
    condition     = aws_lb_target_group.router.slow_start >= 30
    error_message = "a new router task ramps up (its DNS cache starts empty)"
  }
}

run "a_nat_gateway_per_zone_in_a_created_vpc" {
  command = plan
  variables {
    create_vpc         = true
    vpc_id             = null
    public_subnet_ids  = []
    private_subnet_ids = []
  }

  assert {
    condition     = length(aws_nat_gateway.this) == 2 && length(aws_eip.nat) == 2
    error_message = "one NAT gateway in each zone's public subnet"
  }
  assert {
    condition     = length(aws_route_table.private) == 2 && length(aws_route_table_association.private) == 2
    error_message = "each private subnet has a route table of its own, through its zone's NAT gateway"
  }
}

run "first_apply_in_an_empty_account" {
  command = plan

  assert {
    condition     = length(aws_iam_service_linked_role.ecs) == 1 && aws_iam_service_linked_role.ecs[0].aws_service_name == "ecs.amazonaws.com"
    error_message = "the ECS service-linked role is created unless told it exists"
  }
  assert {
    condition     = output.capacity_provider_name == aws_ecs_capacity_provider.this.name
    error_message = "the capacity provider output comes through its association with the cluster"
  }
}

run "an_existing_service_linked_role_is_left_alone" {
  command = plan
  variables {
    create_ecs_service_linked_role = false
  }

  assert {
    condition     = length(aws_iam_service_linked_role.ecs) == 0
    error_message = "no second service-linked role"
  }
}

run "no_network_is_refused_with_what_to_set" {
  command = plan
  variables {
    vpc_id             = null
    public_subnet_ids  = []
    private_subnet_ids = []
  }
  expect_failures = [var.vpc_id, var.public_subnet_ids, var.private_subnet_ids]
}

run "a_name_too_long_for_a_target_group_is_refused" {
  command = plan
  variables {
    name = "whaleray-production-eu-west"
  }
  expect_failures = [var.name]
}

run "one_instance_is_refused" {
  command = plan
  variables {
    asg_min_size = 1
  }
  expect_failures = [var.asg_min_size]
}

run "bridge_mode_has_no_router_tasks_group" {
  command = plan

  assert {
    condition     = output.router_tasks_security_group_id == null
    error_message = "in bridge mode the instances' group is the routers' group; no separate one"
  }
}

run "bridge_mode_deployments_are_reachable" {
  command = plan
  variables {
    deployments_network_mode = "bridge"
  }

  assert {
    condition     = output.router_container_definition.environment[index(output.router_container_definition.environment[*].name, "WHALERAY_DISCOVERY")].value == "srv"
    error_message = "SRV records carry the dynamic host ports: the router must read them"
  }
  assert {
    condition     = aws_vpc_security_group_ingress_rule.host_ports_from_routers[0].from_port == 32768 && aws_vpc_security_group_egress_rule.routers_to_host_ports[0].to_port == 65535
    error_message = "the routers reach 32768-65535 on the instances, and the instances admit them"
  }
}

run "awsvpc_deployments_need_no_host_ports" {
  command = plan

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.host_ports_from_routers) == 0 && !contains(output.router_container_definition.environment[*].name, "WHALERAY_DISCOVERY")
    error_message = "awsvpc deployments: A records on backend_port, no host-port rules"
  }
}

run "the_image_goes_to_an_immutable_scanned_encrypted_repository" {
  command = plan

  assert {
    condition     = aws_ecr_repository.router.image_tag_mutability == "IMMUTABLE" && aws_ecr_repository.router.image_scanning_configuration[0].scan_on_push
    error_message = "the router's ECR repository has immutable tags and scans every push"
  }
  assert {
    condition     = aws_ecr_repository.router.encryption_configuration[0].encryption_type == "KMS"
    error_message = "images are encrypted with KMS"
  }
  assert {
    condition     = [for rule in jsondecode(aws_ecr_lifecycle_policy.router.policy).rules : rule.selection.countNumber] == [7, 30]
    error_message = "untagged images expire after 7 days; the newest 30 images are kept"
  }
}

run "the_image_defaults_to_the_repository" {
  command = plan
  variables {
    router_image = null
  }
  override_resource {
    target          = aws_ecr_repository.router
    override_during = plan
    values          = { repository_url = "123456789012.dkr.ecr.us-east-1.amazonaws.com/whaleray-router" }
  }

  assert {
    condition     = output.router_image == "123456789012.dkr.ecr.us-east-1.amazonaws.com/whaleray-router:0.1.0"
    error_message = "without router_image, the task definition runs this stack's repository at router_image_tag"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.router.container_definitions)[0].image == output.router_image
    error_message = "the task definition runs that image"
  }
}

run "the_router_may_wake_only_opted_in_services_of_its_cluster" {
  command = plan

  assert {
    condition     = output.router_container_definition.environment[index(output.router_container_definition.environment[*].name, "WHALERAY_WAKE_CLUSTER")].value == aws_ecs_cluster.this.name
    error_message = "the router wakes services of the platform cluster"
  }
  assert {
    condition     = length(aws_iam_role_policy.router_wake) == 1
    error_message = "the router's task role gets the wake permissions"
  }
  assert {
    condition = one([
      for s in data.aws_iam_policy_document.router_wake.statement : s
      if contains(s.actions, "ecs:UpdateService")
      ]).resources == toset(["arn:aws:ecs:us-east-1:123456789012:service/${aws_ecs_cluster.this.name}/*"]) && one([
      for s in data.aws_iam_policy_document.router_wake.statement : one(s.condition)
      if contains(s.actions, "ecs:UpdateService")
    ]).variable == "aws:ResourceTag/whaleray:wake"
    error_message = "UpdateService only on the cluster's services carrying the opt-in tag"
  }
  assert {
    condition = toset(one([
      for s in data.aws_iam_policy_document.router_wake.statement : one(s.condition).values
      if contains(s.actions, "cloudwatch:PutMetricData")
    ])) == toset(["WhaleRay/Router"])
    error_message = "metrics only into the router's own namespace"
  }
}

run "without_waking_the_task_role_has_no_permission" {
  command = plan
  variables {
    wake_on_request = false
  }

  assert {
    condition     = length(aws_iam_role_policy.router_wake) == 0 && !contains(output.router_container_definition.environment[*].name, "WHALERAY_WAKE_CLUSTER")
    error_message = "no wake permissions and no wake settings when it is off"
  }
}
