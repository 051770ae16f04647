# Sleep after idle (with wake_on_request): Application Auto Scaling may set the service to zero tasks, and does
# so when an alarm sees, for idle_minutes in a row, no request ended and none in flight on any router task. The
# routers publish both per opted-in deployment (router/wake/idle.py; namespace WhaleRay/Router, dimension
# DeploymentId): a long request in flight keeps its deployment awake, and since a wake always comes with a
# request, idle_minutes is also the least time a deployment stays awake. Missing data (no router reported any
# request) counts as idle. The router wakes the service again (UpdateService) on its next request, reporting
# the held requests in flight first: the alarm stays in ALARM while the service sleeps, and Application Auto
# Scaling invokes the policy every minute it stays there, so the report takes it out of ALARM (and the router
# raises the count again if the policy set 0 before a task came up).

resource "aws_appautoscaling_target" "sleep" {
  count              = local.wake ? 1 : 0
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${var.cluster_name}/${local.service.name}"
  min_capacity       = 0
  max_capacity       = max(var.wake_on_request.wake_to, var.desired_count)
  tags               = local.tags
}

resource "aws_appautoscaling_policy" "sleep" {
  count              = local.wake ? 1 : 0
  name               = "whaleray-${var.deployment_id}-sleep-when-idle"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.sleep[0].service_namespace
  scalable_dimension = aws_appautoscaling_target.sleep[0].scalable_dimension
  resource_id        = aws_appautoscaling_target.sleep[0].resource_id
  step_scaling_policy_configuration {
    adjustment_type = "ExactCapacity"
    cooldown        = 60
    step_adjustment {
      metric_interval_upper_bound = 0
      scaling_adjustment          = 0
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "idle" {
  count               = local.wake ? 1 : 0
  alarm_name          = "whaleray-${var.deployment_id}-idle"
  alarm_description   = "No request ended and none in flight on any router for ${var.wake_on_request.idle_minutes} minutes: sleep at zero tasks."
  comparison_operator = "LessThanOrEqualToThreshold"
  threshold           = 0
  evaluation_periods  = var.wake_on_request.idle_minutes
  datapoints_to_alarm = var.wake_on_request.idle_minutes
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_appautoscaling_policy.sleep[0].arn]
  tags                = local.tags

  metric_query {
    id          = "activity"
    expression  = "FILL(requests, 0) + FILL(inflight, 0)"
    label       = "Requests ended plus requests in flight, all routers"
    return_data = true
  }
  metric_query {
    id = "requests"
    metric {
      namespace   = "WhaleRay/Router"
      metric_name = "Requests"
      dimensions  = { DeploymentId = var.deployment_id }
      period      = 60
      stat        = "Sum"
    }
  }
  metric_query {
    id = "inflight"
    metric {
      namespace   = "WhaleRay/Router"
      metric_name = "InFlight"
      dimensions  = { DeploymentId = var.deployment_id }
      period      = 60
      stat        = "Maximum"
    }
  }
}
