# The WhaleRay platform around the router: VPC (optional), ECS cluster on EC2 with a capacity provider, the
# Cloud Map namespace deployments register in. alb.tf, router.tf, iam.tf and monitoring.tf hold the rest.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first two zones (sorted by name) are used; a zone AWS adds later sorts after them.
  state = "available"
}

# The ECS-optimised Amazon Linux 2023 AMI, from its public SSM parameter.
data "aws_ssm_parameter" "ecs_ami" {
  name = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
}

locals {
  tags = merge({ Project = "whaleray", ManagedBy = "terraform" }, var.tags)

  azs                = slice(data.aws_availability_zones.available.names, 0, 2)
  vpc_id             = var.create_vpc ? aws_vpc.this[0].id : var.vpc_id
  vpc_cidr           = var.create_vpc ? var.vpc_cidr : data.aws_vpc.existing[0].cidr_block
  public_subnet_ids  = var.create_vpc ? aws_subnet.public[*].id : var.public_subnet_ids
  private_subnet_ids = var.create_vpc ? aws_subnet.private[*].id : var.private_subnet_ids
}

data "aws_vpc" "existing" {
  count = var.create_vpc ? 0 : 1
  id    = var.vpc_id
}

# --- a small two-AZ VPC, when asked for ---------------------------------------------------------------------

resource "aws_vpc" "this" {
  count                = var.create_vpc ? 1 : 0
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true # Cloud Map private namespaces need both
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = var.name })
}

resource "aws_default_security_group" "this" {
  count  = var.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = local.tags
  # No rules: nothing may use the default security group.
}

resource "aws_flow_log" "this" {
  count                = var.create_vpc ? 1 : 0
  vpc_id               = aws_vpc.this[0].id
  traffic_type         = "REJECT"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow[0].arn
  iam_role_arn         = aws_iam_role.flow[0].arn
  tags                 = local.tags
}

resource "aws_cloudwatch_log_group" "flow" {
  count             = var.create_vpc ? 1 : 0
  name              = "/vpc/${var.name}/flow"
  retention_in_days = 365
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}

resource "aws_subnet" "public" {
  count             = var.create_vpc ? 2 : 0
  vpc_id            = aws_vpc.this[0].id
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, count.index)
  availability_zone = local.azs[count.index]
  tags              = merge(local.tags, { Name = "${var.name}-public-${count.index}" })
}

resource "aws_subnet" "private" {
  count             = var.create_vpc ? 2 : 0
  vpc_id            = aws_vpc.this[0].id
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, count.index + 8)
  availability_zone = local.azs[count.index]
  tags              = merge(local.tags, { Name = "${var.name}-private-${count.index}" })
}

resource "aws_internet_gateway" "this" {
  count  = var.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = local.tags
}

locals {
  nat_gateways = var.create_vpc ? (var.nat_gateway_per_zone ? 2 : 1) : 0
}

resource "aws_eip" "nat" {
  count  = local.nat_gateways
  domain = "vpc"
  tags   = local.tags
}

resource "aws_nat_gateway" "this" {
  count         = local.nat_gateways
  allocation_id = aws_eip.nat[count.index].id
  subnet_id     = aws_subnet.public[count.index].id
  tags          = local.tags
}

resource "aws_route_table" "public" {
  count  = var.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this[0].id
  }
  tags = local.tags
}

# One route table per private subnet, each through the NAT gateway of its own zone when there is one per zone.
resource "aws_route_table" "private" {
  count  = var.create_vpc ? 2 : 0
  vpc_id = aws_vpc.this[0].id
  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.this[min(count.index, local.nat_gateways - 1)].id
  }
  tags = local.tags
}

resource "aws_route_table_association" "public" {
  count          = var.create_vpc ? 2 : 0
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_route_table_association" "private" {
  count          = var.create_vpc ? 2 : 0
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[count.index].id
}

# --- Cloud Map ---------------------------------------------------------------------------------------------

resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = var.namespace
  description = "WhaleRay deployments: <deploymentId>.${var.namespace}, resolved by the router"
  vpc         = local.vpc_id
  tags        = local.tags
}

# --- ECS cluster on EC2 -------------------------------------------------------------------------------------

# ECS creates services through this role; an account that never used ECS does not have it yet, and the first
# service would fail to create. Accounts that have it set create_ecs_service_linked_role = false.
resource "aws_iam_service_linked_role" "ecs" {
  count            = var.create_ecs_service_linked_role ? 1 : 0
  aws_service_name = "ecs.amazonaws.com"
  description      = "ECS, for the WhaleRay cluster's services"
}

resource "aws_ecs_cluster" "this" {
  name       = "${var.name}-cluster"
  depends_on = [aws_iam_service_linked_role.ecs]
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
  tags = local.tags
}

resource "aws_launch_template" "ecs" {
  name_prefix            = "${var.name}-ecs-"
  image_id               = data.aws_ssm_parameter.ecs_ami.value
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.instances.id]
  iam_instance_profile {
    arn = aws_iam_instance_profile.ecs.arn
  }
  metadata_options {
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1          # containers in bridge mode cannot reach the instance's metadata
    http_endpoint               = "enabled"
  }
  monitoring {
    enabled = true
  }
  user_data = base64encode(<<-EOT
    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<CONFIG
    ECS_CLUSTER=${aws_ecs_cluster.this.name}
    ECS_ENABLE_CONTAINER_METADATA=true
    ECS_AWSVPC_BLOCK_IMDS=true
    CONFIG
  EOT
  )
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-ecs" })
  }
  tags = local.tags
}

resource "aws_autoscaling_group" "ecs" {
  name_prefix           = "${var.name}-ecs-"
  min_size              = var.asg_min_size
  max_size              = var.asg_max_size
  vpc_zone_identifier   = local.private_subnet_ids
  protect_from_scale_in = false # managed termination protection is off: ECS may scale instances in
  launch_template {
    id      = aws_launch_template.ecs.id
    version = "$Latest"
  }
  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }
  lifecycle {
    ignore_changes = [desired_capacity] # the capacity provider owns it
  }
}

resource "aws_ecs_capacity_provider" "this" {
  name = "${var.name}-ec2"
  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.ecs.arn
    managed_termination_protection = "DISABLED"
    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = var.capacity_target_percent
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = 10
    }
  }
  tags = local.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = [aws_ecs_capacity_provider.this.name]
  default_capacity_provider_strategy {
    capacity_provider = aws_ecs_capacity_provider.this.name
    weight            = 1
  }
}

