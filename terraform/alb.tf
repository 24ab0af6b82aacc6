# The public Application Load Balancer: HTTPS (TLS 1.3 policy) when a
# certificate is given or made for domain_name (dns.tf), with HTTP redirected
# to it; plain HTTP forwarding only without one. Invalid header fields are dropped; access logs go to S3.

resource "aws_lb" "main" {
  #checkov:skip=CKV2_AWS_76:The attached web ACL (waf.tf) has AWSManagedRulesKnownBadInputsRuleSet, the Log4j rules; CKV_AWS_192 passes on the ACL itself.
  #checkov:skip=CKV2_AWS_20:HTTP redirects to HTTPS whenever a certificate is set or made; without a certificate there is no HTTPS to redirect to.
  name                       = "${var.name_prefix}-alb"
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = aws_subnet.public[*].id
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  idle_timeout               = var.alb_idle_timeout_s
  enable_deletion_protection = true

  access_logs {
    bucket  = aws_s3_bucket.alb_logs.id
    prefix  = "alb"
    enabled = true
  }

  depends_on = [aws_s3_bucket_policy.alb_logs]
}

resource "aws_lb_target_group" "app" {
  #checkov:skip=CKV_AWS_378:TLS ends at the ALB; ALB-to-task traffic stays inside private subnets, allowed only between their security groups.
  name                 = "${var.name_prefix}-tg"
  target_type          = "ip"
  protocol             = "HTTP"
  port                 = local.container_port
  vpc_id               = aws_vpc.main.id
  deregistration_delay = 15

  # Liveness, not readiness (terraform/README.md, "Failover"). While RDS fails
  # over, /health (readiness) fails on every task at once: taking them all out
  # serves nothing better, and ECS would replace the whole fleet, whose new
  # tasks then wait for the same database. /health/live stays 200 while the
  # database is away and answers 503 only when the task itself is broken (a
  # failed journal, a dead or stuck writer): that task alone is replaced.
  health_check {
    path                = "/health/live"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "https" {
  count             = local.https_enabled ? 1 : 0
  load_balancer_arn = aws_lb.main.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = local.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.app.arn
  }
}

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:Plain HTTP is served only when no certificate is given or made; with one, this listener redirects to HTTPS.
  #checkov:skip=CKV_AWS_103:TLS policy applies to the HTTPS listener (TLS 1.3 policy); this one is HTTP by design, see CKV_AWS_2.
  load_balancer_arn = aws_lb.main.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = local.https_enabled ? "redirect" : "forward"
    target_group_arn = local.https_enabled ? null : aws_lb_target_group.app.arn

    dynamic "redirect" {
      for_each = local.https_enabled ? [1] : []
      content {
        port        = "443"
        protocol    = "HTTPS"
        status_code = "HTTP_301"
      }
    }
  }
}

resource "aws_s3_bucket" "alb_logs" {
  #checkov:skip=CKV_AWS_18:This bucket is the access-log destination itself; logging it would recurse.
  #checkov:skip=CKV2_AWS_62:Access logs need no event notifications.
  #checkov:skip=CKV_AWS_144:Access logs are diagnostic, not primary data; cross-region replication is not worth its cost.
  #checkov:skip=CKV_AWS_145:ALB access-log delivery supports SSE-S3 only, not KMS.
  bucket_prefix = "${var.name_prefix}-alb-logs-"
  force_destroy = false
}

resource "aws_s3_bucket_public_access_block" "alb_logs" {
  bucket                  = aws_s3_bucket.alb_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "alb_logs" {
  bucket = aws_s3_bucket.alb_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "alb_logs" {
  bucket = aws_s3_bucket.alb_logs.id
  rule {
    apply_server_side_encryption_by_default {
      # ALB access log delivery supports SSE-S3 only.
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "alb_logs" {
  bucket = aws_s3_bucket.alb_logs.id
  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# Who delivers ALB access logs depends on the region (Elastic Load Balancing
# user guide, "Enable access logs", bucket permissions): in the regions that
# existed before August 2022 (us-east-1, the default, among them) the
# regional Elastic Load Balancing account writes them; in later regions the
# log delivery service principal does. The provider knows that account for
# exactly the regions listed here (aws_elb_service_account fails for any
# other), so it is looked up only there; the service principal is always
# granted.
locals {
  elb_account_regions = [
    "af-south-1", "ap-east-1", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-south-1",
    "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ca-central-1", "cn-north-1", "cn-northwest-1",
    "eu-central-1", "eu-north-1", "eu-south-1", "eu-west-1", "eu-west-2", "eu-west-3", "me-south-1",
    "sa-east-1", "us-east-1", "us-east-2", "us-gov-east-1", "us-gov-west-1", "us-west-1", "us-west-2",
  ]
}

data "aws_elb_service_account" "current" {
  count = contains(local.elb_account_regions, var.region) ? 1 : 0
}

data "aws_iam_policy_document" "alb_logs" {
  source_policy_documents = [data.aws_iam_policy_document.tls_only["alb_logs"].json]

  statement {
    sid       = "AllowAlbLogDelivery"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.alb_logs.arn}/alb/AWSLogs/${data.aws_caller_identity.current.account_id}/*"]
    principals {
      type        = "Service"
      identifiers = ["logdelivery.elasticloadbalancing.amazonaws.com"]
    }
    dynamic "principals" {
      for_each = data.aws_elb_service_account.current
      content {
        type        = "AWS"
        identifiers = [principals.value.arn]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "alb_logs" {
  bucket = aws_s3_bucket.alb_logs.id
  policy = data.aws_iam_policy_document.alb_logs.json
}
