# Plan-level assertions on modules/deployment with a mocked AWS provider: no account, no network.

mock_provider "aws" {
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
