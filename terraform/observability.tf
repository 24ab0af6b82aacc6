# Observability: the AWS Distro for OpenTelemetry collector runs beside the
# service in every task. It scrapes the service's Prometheus listener on
# loopback into CloudWatch metrics (embedded metric format, through the logs
# endpoint) and forwards the service's OTLP traces to X-Ray (the service
# samples them: parent-based, var.trace_sampling_ratio). Alarms go to an SNS
# topic; a dashboard shows the same signals.
#
# The collector image comes from public.ecr.aws through an ECR pull-through
# cache rule: the tasks have no internet route, ECR fetches it upstream.

locals {
  # Where the service listens for the collector (SPEC section 7 defaults),
  # loopback only: the public port never serves metrics.
  metrics_addr   = "127.0.0.1:9464"
  otlp_http_addr = "127.0.0.1:4318"

  metrics_namespace = "Saldos"
  # Service metrics (gauges) published to CloudWatch, dimensioned by service;
  # the alarms and the dashboard use these and nothing else from the service.
  service_metrics = [
    "saldos_storage_healthy",
    "saldos_connections_open",
    "saldos_accounts_stored",
    "saldos_idempotency_keys_stored",
  ]

  collector_memory_mib = 256
  app_memory_min_mib   = 512

  pull_through_prefix      = "${var.name_prefix}-pub"
  registry                 = split("/", aws_ecr_repository.saldos.repository_url)[0]
  collector_repository     = "${local.pull_through_prefix}/aws-observability/aws-otel-collector"
  collector_image          = "${local.registry}/${local.collector_repository}:${var.collector_version}"
  collector_repository_arn = "arn:${data.aws_partition.current.partition}:ecr:${var.region}:${data.aws_caller_identity.current.account_id}:repository/${local.collector_repository}"

  collector_config = {
    extensions = {
      health_check = {}
    }
    receivers = {
      otlp = {
        protocols = { http = { endpoint = local.otlp_http_addr } }
      }
      prometheus = {
        config = {
          scrape_configs = [{
            job_name        = "saldos"
            scrape_interval = "60s"
            static_configs = [{
              targets = [local.metrics_addr]
              labels  = { ServiceName = var.name_prefix }
            }]
          }]
        }
      }
    }
    processors = {
      # Below the container's reservation, so a burst drops data, not the task.
      memory_limiter = { check_interval = "1s", limit_mib = local.collector_memory_mib - 56, spike_limit_mib = 50 }
      # The task's identity (for the {TaskId} log stream) from the ECS metadata endpoint.
      resourcedetection = { detectors = ["env", "ecs"] }
      batch             = {}
    }
    exporters = {
      awsxray = {
        region = var.region
      }
      awsemf = {
        region                  = var.region
        namespace               = local.metrics_namespace
        log_group_name          = aws_cloudwatch_log_group.metrics.name
        log_stream_name         = "{TaskId}"
        dimension_rollup_option = "NoDimensionRollup"
        metric_declarations = [{
          dimensions            = [["ServiceName"]]
          metric_name_selectors = local.service_metrics
        }]
      }
    }
    service = {
      extensions = ["health_check"]
      pipelines = {
        traces  = { receivers = ["otlp"], processors = ["memory_limiter", "resourcedetection", "batch"], exporters = ["awsxray"] }
        metrics = { receivers = ["prometheus"], processors = ["memory_limiter", "resourcedetection", "batch"], exporters = ["awsemf"] }
      }
    }
  }

  # Not essential, and the service waits only for it to start, not to be
  # healthy: a collector failure must not stop the ledger; it shows as missing
  # metrics, which the storage alarm treats as breaching.
  collector_container = {
    name                   = "collector"
    image                  = local.collector_image
    essential              = false
    readonlyRootFilesystem = true
    linuxParameters        = { capabilities = { drop = ["ALL"] }, initProcessEnabled = false }
    memoryReservation      = local.collector_memory_mib
    environment = [
      { name = "AOT_CONFIG_CONTENT", value = yamlencode(local.collector_config) },
    ]
    healthCheck = {
      command     = ["CMD", "/healthcheck"]
      interval    = 10
      timeout     = 3
      retries     = 3
      startPeriod = 10
    }
    logConfiguration = local.log_configuration
  }

  alb_dimensions = {
    LoadBalancer = aws_lb.main.arn_suffix
    TargetGroup  = aws_lb_target_group.app.arn_suffix
  }
  # Connections a saldos container may hold beyond db_connections: the
  # sweeper's, the feed's listener (which also announces the task's commits)
  # and a fence's while a timed-out connection is cancelled
  # (CONNECTIONS_SPARE in src/postgres/mod.rs).
  db_connections_spare = 3
  # More connections than every task at the autoscaling ceiling may open
  # (the migrate container's one is closed before saldos starts, which
  # waits for it to succeed): a leak or a foreign client.
  db_connections_budget = var.autoscaling_max_tasks * (var.db_connections + local.db_connections_spare)
}

resource "aws_ecr_pull_through_cache_rule" "public" {
  count                 = var.emulator_unsupported_off ? 0 : 1
  ecr_repository_prefix = local.pull_through_prefix
  upstream_registry_url = "public.ecr.aws"
}

# The repositories the cache creates on first pull: encrypted (KMS, AWS-managed
# key: a customer-managed one would need a role for ECR), tags immutable, and
# only the last 5 images kept.
resource "aws_ecr_repository_creation_template" "pull_through" {
  count                = var.emulator_unsupported_off ? 0 : 1
  prefix               = local.pull_through_prefix
  description          = "Images cached from public.ecr.aws (the ADOT collector)"
  applied_for          = ["PULL_THROUGH_CACHE"]
  image_tag_mutability = "IMMUTABLE"

  encryption_configuration {
    encryption_type = "KMS"
  }

  lifecycle_policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the last 5 images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 5 }
      action       = { type = "expire" }
    }]
  })
}

resource "aws_cloudwatch_log_group" "metrics" {
  #checkov:skip=CKV_AWS_338:These lines only carry metrics (EMF); CloudWatch keeps the metrics themselves for 15 months.
  name              = "/ecs/${var.name_prefix}/metrics"
  kms_key_id        = aws_kms_key.main.arn
  retention_in_days = var.app_log_retention_days
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name_prefix}-alarms"
  kms_master_key_id = aws_kms_key.main.id
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count     = var.alarm_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

# --- alarms ---------------------------------------------------------------

locals {
  # Every single-metric alarm, in one table: the service's own gauge, the
  # ALB's view of the tasks, and (postgres mode) the database.
  alarm_definitions = {
    storage_unhealthy = {
      description = "A task reports saldos_storage_healthy = 0 (journal failed or database unreachable), or no task reports at all."
      namespace   = local.metrics_namespace
      metric      = "saldos_storage_healthy"
      dimensions  = { ServiceName = var.name_prefix }
      statistic   = "Minimum"
      period_s    = 60
      periods     = 3
      operator    = "LessThanThreshold"
      threshold   = 1
      missing     = "breaching"
      postgres    = false
    }
    latency_p99 = {
      description = "p99 target response time above ${var.alarm_p99_latency_s} s."
      namespace   = "AWS/ApplicationELB"
      metric      = "TargetResponseTime"
      dimensions  = local.alb_dimensions
      statistic   = "p99"
      period_s    = 60
      periods     = 3
      operator    = "GreaterThanThreshold"
      threshold   = var.alarm_p99_latency_s
      missing     = "notBreaching"
      postgres    = false
    }
    unhealthy_hosts = {
      description = "A target failed the ALB's /health check for 3 minutes."
      namespace   = "AWS/ApplicationELB"
      metric      = "UnHealthyHostCount"
      dimensions  = local.alb_dimensions
      statistic   = "Maximum"
      period_s    = 60
      periods     = 3
      operator    = "GreaterThanThreshold"
      threshold   = 0
      missing     = "notBreaching"
      postgres    = false
    }
    db_cpu = {
      description = "Database CPU above 80 % for 15 minutes."
      namespace   = "AWS/RDS"
      metric      = "CPUUtilization"
      dimensions  = local.db_dimensions
      statistic   = "Average"
      period_s    = 300
      periods     = 3
      operator    = "GreaterThanThreshold"
      threshold   = 80
      missing     = "breaching"
      postgres    = true
    }
    db_free_storage = {
      description = "Less than 10 % of the allocated storage free (autoscaling may have hit its ceiling)."
      namespace   = "AWS/RDS"
      metric      = "FreeStorageSpace"
      dimensions  = local.db_dimensions
      statistic   = "Minimum"
      period_s    = 300
      periods     = 1
      operator    = "LessThanThreshold"
      threshold   = var.db_allocated_storage_gib * 1073741824 / 10
      missing     = "breaching"
      postgres    = true
    }
    db_connections = {
      description = "More database connections than the service may open (${local.db_connections_budget})."
      namespace   = "AWS/RDS"
      metric      = "DatabaseConnections"
      dimensions  = local.db_dimensions
      statistic   = "Maximum"
      period_s    = 300
      periods     = 3
      operator    = "GreaterThanThreshold"
      threshold   = local.db_connections_budget
      missing     = "breaching"
      postgres    = true
    }
  }
  alarms        = { for name, alarm in local.alarm_definitions : name => alarm if local.postgres || !alarm.postgres }
  db_dimensions = { DBInstanceIdentifier = local.db_identifier }
}

resource "aws_cloudwatch_metric_alarm" "metric" {
  for_each            = local.alarms
  alarm_name          = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  dimensions          = each.value.dimensions
  statistic           = startswith(each.value.statistic, "p") ? null : each.value.statistic
  extended_statistic  = startswith(each.value.statistic, "p") ? each.value.statistic : null
  period              = each.value.period_s
  evaluation_periods  = each.value.periods
  comparison_operator = each.value.operator
  threshold           = each.value.threshold
  treat_missing_data  = each.value.missing
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

# 5xx as a share of requests: metric math over three ALB counters.
resource "aws_cloudwatch_metric_alarm" "http_5xx_rate" {
  alarm_name          = "${var.name_prefix}-5xx-rate"
  alarm_description   = "More than ${var.alarm_5xx_percent} % of requests answered 5xx (by the tasks or the ALB)."
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_5xx_percent
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "rate"
    expression  = "100 * (FILL(target5xx, 0) + FILL(elb5xx, 0)) / FILL(requests, 1)"
    label       = "5xx %"
    return_data = true
  }

  dynamic "metric_query" {
    for_each = {
      target5xx = "HTTPCode_Target_5XX_Count"
      elb5xx    = "HTTPCode_ELB_5XX_Count"
      requests  = "RequestCount"
    }
    content {
      id = metric_query.key
      metric {
        namespace   = "AWS/ApplicationELB"
        metric_name = metric_query.value
        dimensions  = { LoadBalancer = aws_lb.main.arn_suffix }
        period      = 60
        stat        = "Sum"
      }
    }
  }
}

# --- dashboard ------------------------------------------------------------

resource "aws_cloudwatch_dashboard" "main" {
  dashboard_name = var.name_prefix
  dashboard_body = jsonencode({
    widgets = concat(
      [
        {
          type = "metric", x = 0, y = 0, width = 12, height = 6
          properties = {
            title  = "Requests and 5xx"
            region = var.region
            stat   = "Sum"
            period = 60
            metrics = [
              ["AWS/ApplicationELB", "RequestCount", "LoadBalancer", aws_lb.main.arn_suffix],
              ["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "LoadBalancer", aws_lb.main.arn_suffix],
              ["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "LoadBalancer", aws_lb.main.arn_suffix],
            ]
          }
        },
        {
          type = "metric", x = 12, y = 0, width = 12, height = 6
          properties = {
            title  = "Target response time p99 / p50 (s)"
            region = var.region
            period = 60
            metrics = [
              ["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", aws_lb.main.arn_suffix, "TargetGroup", aws_lb_target_group.app.arn_suffix, { stat = "p99" }],
              ["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", aws_lb.main.arn_suffix, "TargetGroup", aws_lb_target_group.app.arn_suffix, { stat = "p50" }],
            ]
          }
        },
        {
          type = "metric", x = 0, y = 6, width = 12, height = 6
          properties = {
            title  = "Healthy / unhealthy targets, running tasks"
            region = var.region
            stat   = "Maximum"
            period = 60
            metrics = [
              ["AWS/ApplicationELB", "HealthyHostCount", "LoadBalancer", aws_lb.main.arn_suffix, "TargetGroup", aws_lb_target_group.app.arn_suffix],
              ["AWS/ApplicationELB", "UnHealthyHostCount", "LoadBalancer", aws_lb.main.arn_suffix, "TargetGroup", aws_lb_target_group.app.arn_suffix],
              ["ECS/ContainerInsights", "RunningTaskCount", "ClusterName", aws_ecs_cluster.main.name, "ServiceName", aws_ecs_service.app.name],
            ]
          }
        },
        {
          type = "metric", x = 12, y = 6, width = 12, height = 6
          properties = {
            title   = "Service (from its /metrics)"
            region  = var.region
            stat    = "Minimum"
            period  = 60
            metrics = [for name in local.service_metrics : [local.metrics_namespace, name, "ServiceName", var.name_prefix]]
          }
        },
      ],
      local.postgres ? [
        {
          type = "metric", x = 0, y = 12, width = 24, height = 6
          properties = {
            title  = "Database: CPU %, connections, free storage"
            region = var.region
            period = 300
            metrics = [
              ["AWS/RDS", "CPUUtilization", "DBInstanceIdentifier", local.db_identifier],
              ["AWS/RDS", "DatabaseConnections", "DBInstanceIdentifier", local.db_identifier, { yAxis = "right" }],
              ["AWS/RDS", "FreeStorageSpace", "DBInstanceIdentifier", local.db_identifier, { yAxis = "right" }],
            ]
          }
        },
      ] : [],
    )
  })
}
