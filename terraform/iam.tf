# Least-privilege roles, created only when no existing role ARN is given (an
# AWS Academy Learner Lab forbids creating roles: pass its LabRole ARN as both
# execution_role_arn and task_role_arn and nothing here is created).

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "execution" {
  count              = var.execution_role_arn == "" ? 1 : 0
  name_prefix        = "${var.name_prefix}-exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid     = "PullTheImages"
    actions = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = [
      aws_ecr_repository.saldos.arn,
      local.collector_repository_arn,
    ]
  }
  statement {
    # The first pull of the collector image fills the pull-through cache.
    sid       = "FillThePullThroughCache"
    actions   = ["ecr:BatchImportUpstreamImage", "ecr:CreateRepository"]
    resources = [local.collector_repository_arn]
  }
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions.
  }
  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.app.arn}:*"]
  }
  # The RDS-managed master secret, injected only into the migrate container:
  # this secret and nothing else, decrypted only through Secrets Manager.
  dynamic "statement" {
    for_each = local.postgres ? [1] : []
    content {
      sid       = "ReadTheMasterSecret"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [local.master_secret_arn]
    }
  }
  dynamic "statement" {
    for_each = local.postgres ? [1] : []
    content {
      sid       = "DecryptTheMasterSecret"
      actions   = ["kms:Decrypt"]
      resources = [aws_kms_key.main.arn]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${var.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  count  = var.execution_role_arn == "" ? 1 : 0
  name   = "pull-image-write-logs"
  role   = aws_iam_role.execution[0].id
  policy = data.aws_iam_policy_document.execution.json
}

resource "aws_iam_role" "task" {
  count              = var.task_role_arn == "" ? 1 : 0
  name_prefix        = "${var.name_prefix}-task-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "task" {
  # Postgres mode: log in as the service's role with IAM tokens, on this
  # instance only.
  dynamic "statement" {
    for_each = local.postgres ? [1] : []
    content {
      sid       = "ConnectAsTheAppUser"
      actions   = ["rds-db:connect"]
      resources = [local.db_user_arn]
    }
  }
  # Journal mode: mount and write the journal through its access point.
  dynamic "statement" {
    for_each = local.journal ? [1] : []
    content {
      sid       = "MountAndWriteTheJournal"
      actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
      resources = [aws_efs_file_system.journal[0].arn]
      condition {
        test     = "StringEquals"
        variable = "elasticfilesystem:AccessPointArn"
        values   = [aws_efs_access_point.journal[0].arn]
      }
    }
  }
  # The collector: traces to X-Ray, metrics as EMF into its own log group.
  statement {
    sid       = "SendTraces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"] # X-Ray's write actions have no resource-level permissions.
  }
  statement {
    sid       = "WriteEmfMetrics"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [aws_cloudwatch_log_group.metrics.arn, "${aws_cloudwatch_log_group.metrics.arn}:*"]
  }
}

resource "aws_iam_role_policy" "task" {
  count  = var.task_role_arn == "" ? 1 : 0
  name   = "storage-traces-metrics"
  role   = aws_iam_role.task[0].id
  policy = data.aws_iam_policy_document.task.json
}

# The flow log service, on behalf of this account's flow logs only (no
# confused deputy: another account's flow log cannot use this role).
data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${data.aws_partition.current.partition}:ec2:${var.region}:${data.aws_caller_identity.current.account_id}:vpc-flow-log/*"]
    }
  }
}

resource "aws_iam_role" "flow_logs" {
  count              = local.create_roles ? 1 : 0
  name_prefix        = "${var.name_prefix}-flow-"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_assume.json
}

data "aws_iam_policy_document" "flow_logs" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.flow.arn}:*"]
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  count  = local.create_roles ? 1 : 0
  name   = "write-flow-logs"
  role   = aws_iam_role.flow_logs[0].id
  policy = data.aws_iam_policy_document.flow_logs.json
}

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

# RDS enhanced monitoring (OS metrics every 30 s), only when roles are created.
resource "aws_iam_role" "rds_monitoring" {
  count              = local.postgres && local.create_roles ? 1 : 0
  name_prefix        = "${var.name_prefix}-rdsmon-"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  count      = local.postgres && local.create_roles ? 1 : 0
  role       = aws_iam_role.rds_monitoring[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}
