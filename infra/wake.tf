# Waking sleeping deployments (router/wake): the router's task role may raise (or read) the desired count of the
# platform cluster's services that opted in with the `whaleray:wake` tag and of no other, read the namespace's
# registry, and publish the idle signal to its own CloudWatch namespace. Nothing else.

locals {
  wake_environment = var.wake_on_request ? {
    WHALERAY_WAKE_CLUSTER = aws_ecs_cluster.this.name
    WHALERAY_AWS_REGION   = data.aws_region.current.name
  } : {}
  arn_prefix = "arn:aws:%s:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}"
}

data "aws_iam_policy_document" "router_wake" {
  statement {
    sid       = "WakeOptedInServicesOfThisCluster"
    actions   = ["ecs:DescribeServices", "ecs:UpdateService"]
    resources = ["${format(local.arn_prefix, "ecs")}:service/${aws_ecs_cluster.this.name}/*"]
    condition {
      test     = "Null" # the tag is present: the deployment opted in (infra/modules/deployment, wake_on_request)
      variable = "aws:ResourceTag/whaleray:wake"
      values   = ["false"]
    }
  }
  statement {
    sid       = "ListTheNamespacesDeployments" # List actions take no resource-level permissions
    actions   = ["servicediscovery:ListNamespaces", "servicediscovery:ListServices"]
    resources = ["*"]
  }
  statement {
    sid       = "ReadWhetherADeploymentOptedIn"
    actions   = ["servicediscovery:ListTagsForResource"]
    resources = ["${format(local.arn_prefix, "servicediscovery")}:service/*"]
  }
  statement {
    sid       = "FindTheHealthyInstancesOfThisNamespace"
    actions   = ["servicediscovery:DiscoverInstances"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "servicediscovery:NamespaceName"
      values   = [var.namespace]
    }
  }
  statement {
    sid       = "PublishTheIdleSignal"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["WhaleRay/Router"]
    }
  }
}

resource "aws_iam_role_policy" "router_wake" {
  count  = var.wake_on_request ? 1 : 0
  name   = "wake-sleeping-deployments"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.router_wake.json
}
