# ECS on Fargate. Postgres mode: desired_count tasks (default 3, one per AZ)
# share the RDS database; rolling deployments keep at least 50 % serving and
# start up to 200 %; autoscaling (autoscaling.tf) follows CPU and requests.
# Journal mode: one task owns the journal on EFS; deployments stop the old task
# before starting the new one (minimum 0 %, maximum 100 %), so there is never a
# second writer. In both, the circuit breaker rolls back a failed deployment.
#
# A task holds up to three containers: `migrate` (postgres mode; runs
# `saldos migrate` as the master user under the service's advisory lock, then
# exits), `collector` (the ADOT sidecar, observability.tf) and `saldos`, which
# starts after the migration succeeded and the collector started.
#
# Who owns what (README, "Who owns what"): Terraform owns the service's shape
# and registers the task definition revision the service is created with;
# autoscaling owns the running count and the pipeline the running revision,
# so an apply ignores both on the service and changes nothing after a
# pipeline deploy or a scale-out.

locals {
  # Valid Fargate memory sizes (MiB) for each CPU size.
  fargate_memory = {
    256   = [512, 1024, 2048]
    512   = [for gib in range(1, 5) : gib * 1024]
    1024  = [for gib in range(2, 9) : gib * 1024]
    2048  = [for gib in range(4, 17) : gib * 1024]
    4096  = [for gib in range(8, 31) : gib * 1024]
    8192  = [for gib in range(16, 61, 4) : gib * 1024]
    16384 = [for gib in range(32, 121, 8) : gib * 1024]
  }

  deployments = {
    postgres = { desired_count = var.desired_count, minimum_healthy_percent = 50, maximum_percent = 200 }
    journal  = { desired_count = 1, minimum_healthy_percent = 0, maximum_percent = 100 }
  }
  deployment = local.deployments[var.storage]

  # How long `saldos migrate` keeps retrying while the database is unreachable
  # (SALDOS_DB_WAIT) before it fails the task: longer than an RDS Multi-AZ
  # failover (60-120 s), so a task started during one waits it out instead of
  # failing and being replaced by another that fails the same way.
  migrate_db_wait_s = 300
  # ECS ignores failing health checks for this long after a task starts: the
  # service's own start (var.health_check_grace_s) and, in postgres mode, what
  # the migrate container may wait for the database before saldos starts.
  health_check_grace = {
    postgres = local.migrate_db_wait_s + var.health_check_grace_s
    journal  = var.health_check_grace_s
  }

  log_configuration = {
    logDriver = "awslogs"
    options = {
      awslogs-group         = aws_cloudwatch_log_group.app.name
      awslogs-region        = var.region
      awslogs-stream-prefix = "saldos"
    }
  }

  # Settings that depend on the mode, keyed by var.storage (or by auth mode) so
  # each mode's whole configuration reads in one place. How the service
  # reaches its storage, shared by the migrate and the saldos containers:
  storage_environment = {
    postgres = [
      { name = "SALDOS_STORAGE", value = "postgres" },
      { name = "PGHOST", value = one(aws_db_instance.main[*].address) },
      { name = "PGPORT", value = tostring(local.db_port) },
      { name = "PGDATABASE", value = var.db_name },
      { name = "PGSSLMODE", value = "verify-full" },
      { name = "PGSSLROOTCERT", value = local.rds_ca_bundle_path },
      { name = "SALDOS_DB_TIMEOUT", value = "${var.db_timeout_s}s" },
      { name = "SALDOS_LOG_FORMAT", value = "json" },
    ]
    journal = [
      { name = "SALDOS_STORAGE", value = "journal" },
      { name = "SALDOS_DATA_DIR", value = "/data" },
      { name = "SALDOS_LOG_FORMAT", value = "json" },
    ]
  }
  # The service's own database login: its least-privilege role with IAM
  # tokens minted from the task role, never a password.
  app_storage_environment = {
    postgres = [
      { name = "PGUSER", value = var.db_app_user },
      { name = "SALDOS_DB_AUTH", value = "rds-iam" },
      { name = "AWS_REGION", value = var.region },
      { name = "SALDOS_DB_CONNECTIONS", value = tostring(var.db_connections) },
    ]
    journal = []
  }
  auth_mode = var.allow_unauthenticated ? "none" : "jwt"
  auth_environment = {
    none = [{ name = "SALDOS_AUTH", value = "none" }]
    jwt = [
      { name = "SALDOS_AUTH", value = "jwt" },
      { name = "SALDOS_JWT_ISSUER", value = var.jwt_issuer },
      { name = "SALDOS_JWT_AUDIENCE", value = var.jwt_audience },
      { name = "SALDOS_JWKS_URL", value = var.jwks_url },
    ]
  }
  telemetry_environment = [
    { name = "SALDOS_METRICS_ADDR", value = local.metrics_addr },
    { name = "OTEL_EXPORTER_OTLP_ENDPOINT", value = "http://${local.otlp_http_addr}" },
    { name = "OTEL_EXPORTER_OTLP_PROTOCOL", value = "http/protobuf" },
    { name = "OTEL_SERVICE_NAME", value = "saldos" },
    { name = "OTEL_TRACES_SAMPLER", value = "parentbased_traceidratio" },
    { name = "OTEL_TRACES_SAMPLER_ARG", value = tostring(var.trace_sampling_ratio) },
  ]
  app_mount_points = {
    postgres = []
    journal  = [{ sourceVolume = "journal", containerPath = "/data", readOnly = false }]
  }
  app_depends_on = {
    postgres = [
      { containerName = "migrate", condition = "SUCCESS" },
      { containerName = "collector", condition = "START" },
    ]
    journal = [{ containerName = "collector", condition = "START" }]
  }

  # Postgres mode: runs the migrations as the master user (under the
  # service's advisory lock, so tasks starting together are safe), creates
  # and grants db_app_user, and exits; saldos starts only after it succeeded.
  migrate_container = {
    name                   = "migrate"
    image                  = local.image
    essential              = false
    user                   = "65532:65532"
    readonlyRootFilesystem = true
    linuxParameters        = { capabilities = { drop = ["ALL"] }, initProcessEnabled = false }
    command                = ["migrate"]
    environment = concat(local.storage_environment["postgres"], [
      { name = "PGUSER", value = var.db_master_username },
      { name = "SALDOS_DB_APP_ROLE", value = var.db_app_user },
      # Retry while RDS is away (a failover takes 60-120 s), within a bound.
      { name = "SALDOS_DB_WAIT", value = "${local.migrate_db_wait_s}s" },
    ])
    # No startTimeout: on Fargate it is capped at 120 s, below the wait above,
    # and unset the saldos container waits for this one however long it takes
    # (SALDOS_DB_WAIT is the bound).
    # The RDS-managed master password, read fresh at every task start (a
    # rotation needs nothing else). No other container sees it.
    secrets = [
      { name = "PGPASSWORD", valueFrom = "${local.master_secret_arn}:password::" },
    ]
    logConfiguration = local.log_configuration
  }

  container = {
    name                   = "saldos"
    image                  = local.image
    essential              = true
    user                   = "65532:65532"
    readonlyRootFilesystem = true
    linuxParameters        = { capabilities = { drop = ["ALL"] }, initProcessEnabled = false }
    portMappings = [{
      containerPort = local.container_port
      hostPort      = local.container_port
      protocol      = "tcp"
    }]
    stopTimeout = local.stop_timeout_s
    environment = concat(
      [
        { name = "PORT", value = tostring(local.container_port) },
        { name = "SALDOS_SHUTDOWN_GRACE", value = "${local.shutdown_grace_s}s" },
      ],
      local.storage_environment[var.storage],
      local.app_storage_environment[var.storage],
      local.auth_environment[local.auth_mode],
      local.telemetry_environment,
    )
    mountPoints = local.app_mount_points[var.storage]
    dependsOn   = local.app_depends_on[var.storage]
    healthCheck = {
      command     = ["CMD", "/usr/local/bin/saldos", "healthcheck"]
      interval    = 10
      timeout     = 3
      retries     = 3
      startPeriod = 30
    }
    logConfiguration = local.log_configuration
  }

  task_containers = {
    postgres = [local.migrate_container, local.collector_container, local.container]
    journal  = [local.collector_container, local.container]
  }
}

resource "aws_ecs_cluster" "main" {
  name = "${var.name_prefix}-cluster"

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_task_definition" "app" {
  family                   = "${var.name_prefix}-app"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  execution_role_arn       = local.execution_role
  task_role_arn            = local.task_role
  container_definitions    = jsonencode(local.task_containers[var.storage])
  # A change here registers a new revision; the old one stays registered, since
  # the service (which Terraform does not re-point, see aws_ecs_service.app)
  # and the pipeline's revisions may still run it.
  skip_destroy = true

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  dynamic "volume" {
    for_each = local.journal ? [1] : []
    content {
      name = "journal"
      efs_volume_configuration {
        file_system_id     = aws_efs_file_system.journal[0].id
        transit_encryption = "ENABLED"
        authorization_config {
          access_point_id = aws_efs_access_point.journal[0].id
          iam             = "ENABLED"
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = contains(local.fargate_memory[tostring(var.task_cpu)], var.task_memory)
      error_message = "task_memory is not a valid Fargate memory size for task_cpu."
    }
    precondition {
      condition     = var.task_memory >= local.collector_memory_mib + local.app_memory_min_mib
      error_message = "task_memory must leave the service room beside the collector's reservation."
    }
  }
}

resource "aws_ecs_service" "app" {
  name                               = "${var.name_prefix}-app"
  cluster                            = aws_ecs_cluster.main.id
  task_definition                    = aws_ecs_task_definition.app.arn
  launch_type                        = "FARGATE"
  desired_count                      = local.deployment.desired_count
  deployment_minimum_healthy_percent = local.deployment.minimum_healthy_percent
  deployment_maximum_percent         = local.deployment.maximum_percent
  health_check_grace_period_seconds  = local.health_check_grace[var.storage]
  enable_execute_command             = false

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.app.arn
    container_name   = "saldos"
    container_port   = local.container_port
  }

  depends_on = [aws_lb_listener.http, aws_efs_mount_target.journal, aws_db_instance.main]

  lifecycle {
    # Set when the service is created (the first revision is the one above,
    # the count the mode's), then owned by others: desired_count by
    # autoscaling (postgres mode), task_definition by the pipeline's deploy
    # action. Without this, every apply would undo a scale-out and roll back
    # the deployed image. A change to the task definition made here reaches
    # the service only when an operator deploys it (README, "Who owns what").
    ignore_changes = [desired_count, task_definition]
  }
}
