# The ALB: HTTP (redirecting to HTTPS when a certificate is given), the /services/* rule to the routers.

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "WhaleRay ALB: HTTP and HTTPS from the internet, to the routers only"
  vpc_id      = local.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  #checkov:skip=CKV_AWS_260:Port 80 must stay open to the internet for the HTTP to HTTPS redirect (and for HTTP-only set-ups).
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from the internet (redirected to HTTPS when a certificate is set)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from the internet"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_routers" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the router tasks"
  referenced_security_group_id = var.router_network_mode == "bridge" ? aws_security_group.instances.id : aws_security_group.router_tasks[0].id
  ip_protocol                  = "tcp"
  from_port                    = local.router_target_port_range[0]
  to_port                      = local.router_target_port_range[1]
}

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_150:Deletion protection is a choice of the environment; set it outside for production.
  #checkov:skip=CKV2_AWS_28:A WAF is the platform team's choice, attached outside this module when used.
  #checkov:skip=CKV_AWS_91:Access logging needs a bucket: set alb_access_logs_bucket to turn it on.
  name                       = "${var.name}-alb"
  load_balancer_type         = "application"
  internal                   = false # the platform's public entry point
  security_groups            = [aws_security_group.alb.id]
  subnets                    = local.public_subnet_ids
  idle_timeout               = var.alb_idle_timeout
  drop_invalid_header_fields = true
  enable_deletion_protection = false
  dynamic "access_logs" {
    for_each = var.alb_access_logs_bucket == null ? [] : [var.alb_access_logs_bucket]
    content {
      bucket  = access_logs.value
      enabled = true
    }
  }
  tags = local.tags
}

resource "aws_lb_target_group" "router" {
  #checkov:skip=CKV_AWS_378:TLS ends at the ALB; ALB to router stays in the VPC's private subnets, as it did with Nginx.
  name                 = "${var.name}-router"
  port                 = 8080
  protocol             = "HTTP"
  vpc_id               = local.vpc_id
  target_type          = var.router_network_mode == "bridge" ? "instance" : "ip"
  deregistration_delay = var.deregistration_delay
  # A new task's DNS cache is empty and fills at --dns-max-qps: its share of traffic grows over this time.
  slow_start = var.router_slow_start
  health_check {
    path                = "/health"
    matcher             = "200"
    interval            = var.health_check_interval
    timeout             = 3
    healthy_threshold   = 2
    unhealthy_threshold = var.health_check_unhealthy_threshold
  }
  tags = local.tags
}

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:Plain HTTP stays only when no certificate is given; with one it redirects to HTTPS.
  #checkov:skip=CKV_AWS_103:No TLS on this listener: see CKV_AWS_2.
  #checkov:skip=CKV2_AWS_20:The redirect to HTTPS is conditional on a certificate: see CKV_AWS_2.
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"
  default_action {
    type = var.certificate_arn == null ? "fixed-response" : "redirect"
    dynamic "fixed_response" {
      for_each = var.certificate_arn == null ? [1] : []
      content {
        content_type = "application/json"
        status_code  = "404"
        message_body = "{\"error\":\"Not found. Use /services/{deploymentId}/... format\"}"
      }
    }
    dynamic "redirect" {
      for_each = var.certificate_arn == null ? [] : [1]
      content {
        protocol    = "HTTPS"
        port        = "443"
        status_code = "HTTP_301"
      }
    }
  }
  tags = local.tags
}

resource "aws_lb_listener" "https" {
  count             = var.certificate_arn == null ? 0 : 1
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type = "fixed-response"
    fixed_response {
      content_type = "application/json"
      status_code  = "404"
      message_body = "{\"error\":\"Not found. Use /services/{deploymentId}/... format\"}"
    }
  }
  tags = local.tags
}

# /services/* goes to the routers, on the HTTPS listener when there is one, else on HTTP.
resource "aws_lb_listener_rule" "services" {
  listener_arn = var.certificate_arn == null ? aws_lb_listener.http.arn : aws_lb_listener.https[0].arn
  priority     = 100
  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.router.arn
  }
  condition {
    path_pattern {
      values = ["/services/*"]
    }
  }
  tags = local.tags
}
