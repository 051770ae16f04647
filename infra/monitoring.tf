# Alarms on what users feel (router 5xx rate, p99 response time) and on capacity (unhealthy hosts, CPU),
# and a dashboard with the same figures.

locals {
  alb_dimensions = { LoadBalancer = aws_lb.this.arn_suffix, TargetGroup = aws_lb_target_group.router.arn_suffix }
}

resource "aws_cloudwatch_metric_alarm" "router_5xx_rate" {
  alarm_name          = "${var.name}-router-5xx-rate"
  alarm_description   = "More than 5 % of requests through the routers answered 5xx for 3 minutes"
  comparison_operator = "GreaterThanThreshold"
  threshold           = 5
  evaluation_periods  = 3
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  metric_query {
    id          = "rate"
    expression  = "100 * errors / MAX([requests, 1])"
    label       = "5xx %"
    return_data = true
  }
  metric_query {
    id = "errors"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      dimensions  = local.alb_dimensions
      period      = 60
      stat        = "Sum"
    }
  }
  metric_query {
    id = "requests"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      dimensions  = local.alb_dimensions
      period      = 60
      stat        = "Sum"
    }
  }
  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "router_p99" {
  alarm_name          = "${var.name}-router-p99"
  alarm_description   = "p99 target response time above 2 s for 5 minutes"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "TargetResponseTime"
  dimensions          = local.alb_dimensions
  extended_statistic  = "p99"
  period              = 60
  evaluation_periods  = 5
  threshold           = 2
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "router_unhealthy" {
  alarm_name          = "${var.name}-router-unhealthy-hosts"
  alarm_description   = "A router target has been unhealthy for 3 minutes"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "UnHealthyHostCount"
  dimensions          = local.alb_dimensions
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "router_cpu" {
  alarm_name          = "${var.name}-router-cpu"
  alarm_description   = "Router service CPU above 85 % for 5 minutes: scaling is not keeping up"
  namespace           = "AWS/ECS"
  metric_name         = "CPUUtilization"
  dimensions          = { ClusterName = aws_ecs_cluster.this.name, ServiceName = aws_ecs_service.router.name }
  statistic           = "Average"
  period              = 60
  evaluation_periods  = 5
  threshold           = 85
  comparison_operator = "GreaterThanThreshold"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_dashboard" "router" {
  dashboard_name = "${var.name}-router"
  dashboard_body = jsonencode({
    widgets = [
      for index, widget in [
        { title = "Requests", metrics = [["AWS/ApplicationELB", "RequestCount", "LoadBalancer", aws_lb.this.arn_suffix, "TargetGroup", aws_lb_target_group.router.arn_suffix, { stat = "Sum" }]] },
        { title = "Target 5xx", metrics = [["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "LoadBalancer", aws_lb.this.arn_suffix, "TargetGroup", aws_lb_target_group.router.arn_suffix, { stat = "Sum" }]] },
        { title = "p99 response time", metrics = [["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", aws_lb.this.arn_suffix, "TargetGroup", aws_lb_target_group.router.arn_suffix, { stat = "p99" }]] },
        { title = "Router CPU and tasks", metrics = [["AWS/ECS", "CPUUtilization", "ClusterName", aws_ecs_cluster.this.name, "ServiceName", aws_ecs_service.router.name], ["ECS/ContainerInsights", "RunningTaskCount", "ClusterName", aws_ecs_cluster.this.name, "ServiceName", aws_ecs_service.router.name]] },
        ] : {
        type       = "metric"
        x          = (index % 2) * 12
        y          = floor(index / 2) * 6
        width      = 12
        height     = 6
        properties = { title = widget.title, metrics = widget.metrics, region = data.aws_region.current.name, period = 60 }
      }
    ]
  })
}
