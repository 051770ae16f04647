# Plan-level assertions on modules/deployment with a mocked AWS provider: no account, no network.

mock_provider "aws" {
  # Mocked values must still be ARNs where the provider validates them (the apply run below).
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_appautoscaling_policy" {
    defaults = { arn = "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:mock:resource/ecs/service/c/s:policyName/sleep" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:task-definition/mock:1" }
  }
  mock_resource "aws_service_discovery_service" {
    defaults = { arn = "arn:aws:servicediscovery:us-east-1:123456789012:service/srv-mock" }
  }
  override_data {
    target = data.aws_region.current
    values = { name = "us-east-1" }
  }
}

variables {
  deployment_id            = "hello"
  namespace_id             = "ns-0123456789"
  namespace_name           = "whaleray.local"
  cluster_name             = "whaleray-cluster"
  capacity_provider_name   = "whaleray-ec2"
  image                    = "public.ecr.aws/docker/library/node:22-alpine"
  subnet_ids               = ["subnet-c", "subnet-d"]
  vpc_id                   = "vpc-0123456789abcdef0"
  router_security_group_id = "sg-0123456789abcdef0"
}

run "defaults_suit_a_typical_web_backend" {
  command = plan

  assert {
    condition     = output.dns_name == "hello.whaleray.local"
    error_message = "dns_name is the name the router resolves"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].readonlyRootFilesystem == false
    error_message = "a writable root filesystem by default (applications write to /tmp)"
  }
  assert {
    condition     = length(aws_vpc_security_group_egress_rule.out) == 1 && aws_vpc_security_group_egress_rule.out[0].ip_protocol == "-1"
    error_message = "the backend may reach its dependencies on their own ports"
  }
  assert {
    condition     = aws_vpc_security_group_ingress_rule.from_routers[0].referenced_security_group_id == var.router_security_group_id
    error_message = "only the routers reach the backend"
  }
  assert {
    condition     = lookup(jsondecode(aws_ecs_task_definition.this.container_definitions)[0], "healthCheck", null) == null
    error_message = "no health check command unless one is given"
  }
}

run "everything_is_overridable" {
  command = plan
  variables {
    read_only_root_filesystem = true
    egress_cidr_ipv4          = null
    task_role_policy_arns     = ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]
    health_check_command      = ["CMD-SHELL", "wget -qO- http://127.0.0.1:3000/health || exit 1"]
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].readonlyRootFilesystem == true
    error_message = "read-only when asked"
  }
  assert {
    condition     = length(aws_vpc_security_group_egress_rule.out) == 0 && length(aws_vpc_security_group_egress_rule.https) == 1
    error_message = "HTTPS only when egress is narrowed to nothing else"
  }
  assert {
    condition     = length(aws_iam_role_policy_attachment.task) == 1
    error_message = "the task role gets the given policies"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].healthCheck.command[0] == "CMD-SHELL"
    error_message = "the given health check runs"
  }
}

run "a_sleeping_deployment_wakes_on_request_and_sleeps_when_idle" {
  command = apply
  variables {
    wake_on_request = { wake_to = 2, idle_minutes = 10 }
  }

  assert {
    condition     = length(aws_ecs_service.this) == 0 && aws_ecs_service.sleeping[0].desired_count == 0
    error_message = "created asleep, its count left to the router and Application Auto Scaling"
  }
  assert {
    condition     = aws_service_discovery_service.this.tags["whaleray:wake"] == "2" && aws_ecs_service.sleeping[0].tags["whaleray:wake"] == "2"
    error_message = "the opt-in tag, read by the router (Cloud Map) and by IAM (ECS), carries the count to wake to"
  }
  assert {
    condition     = aws_appautoscaling_target.sleep[0].min_capacity == 0 && aws_appautoscaling_target.sleep[0].max_capacity == 2
    error_message = "Application Auto Scaling may go down to zero"
  }
  assert {
    condition     = one(aws_appautoscaling_policy.sleep[0].step_scaling_policy_configuration[0].step_adjustment).scaling_adjustment == 0 && aws_appautoscaling_policy.sleep[0].step_scaling_policy_configuration[0].adjustment_type == "ExactCapacity"
    error_message = "the idle alarm's policy sets zero tasks"
  }
  assert {
    condition     = aws_cloudwatch_metric_alarm.idle[0].evaluation_periods == 10 && aws_cloudwatch_metric_alarm.idle[0].treat_missing_data == "breaching" && aws_cloudwatch_metric_alarm.idle[0].alarm_actions == toset([aws_appautoscaling_policy.sleep[0].arn])
    error_message = "ten idle minutes in a row, no report counting as idle, put it to sleep"
  }
  assert {
    condition     = toset([for q in aws_cloudwatch_metric_alarm.idle[0].metric_query : q.id]) == toset(["activity", "requests", "inflight"])
    error_message = "requests ended and requests in flight both keep it awake"
  }
  assert {
    condition     = output.ecs_service_name == "whaleray-hello"
    error_message = "the router finds the service by --wake-service-prefix and the id"
  }
}
