# ECS: one Fargate task owns the journal on EFS. Deployments stop the old task
# before starting the new one (minimum 0 %, maximum 100 %), so there is never a
# second writer; the circuit breaker rolls back a deployment that fails.

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

  container = {
    name      = "saldos"
    image     = local.image
    essential = true
    user      = "65532:65532"
    portMappings = [{
      containerPort = local.container_port
      hostPort      = local.container_port
      protocol      = "tcp"
    }]
    readonlyRootFilesystem = true
    linuxParameters = {
      capabilities       = { drop = ["ALL"] }
      initProcessEnabled = false
    }
    stopTimeout = local.stop_timeout_s
    environment = [
      { name = "PORT", value = tostring(local.container_port) },
      { name = "SALDOS_DATA_DIR", value = "/data" },
      { name = "SALDOS_LOG_FORMAT", value = "json" },
      { name = "SALDOS_SHUTDOWN_GRACE", value = "${local.shutdown_grace_s}s" },
    ]
    mountPoints = [{
      sourceVolume  = "journal"
      containerPath = "/data"
      readOnly      = false
    }]
    healthCheck = {
      command     = ["CMD", "/usr/local/bin/saldos", "healthcheck"]
      interval    = 10
      timeout     = 3
      retries     = 3
      startPeriod = 30
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.app.name
        awslogs-region        = var.region
        awslogs-stream-prefix = "saldos"
      }
    }
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
  container_definitions    = jsonencode([local.container])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "journal"
    efs_volume_configuration {
      file_system_id     = aws_efs_file_system.journal.id
      transit_encryption = "ENABLED"
      authorization_config {
        access_point_id = aws_efs_access_point.journal.id
        iam             = "ENABLED"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = contains(local.fargate_memory[tostring(var.task_cpu)], var.task_memory)
      error_message = "task_memory is not a valid Fargate memory size for task_cpu."
    }
  }
}

resource "aws_ecs_service" "app" {
  name                               = "${var.name_prefix}-app"
  cluster                            = aws_ecs_cluster.main.id
  task_definition                    = aws_ecs_task_definition.app.arn
  launch_type                        = "FARGATE"
  desired_count                      = 1
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100
  health_check_grace_period_seconds  = var.health_check_grace_s
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

  depends_on = [aws_lb_listener.http, aws_efs_mount_target.journal]
}
