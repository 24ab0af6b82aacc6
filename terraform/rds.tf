# Postgres mode only: RDS PostgreSQL Multi-AZ (a synchronous standby in another
# AZ, automatic failover) in the database subnets, reachable from the tasks
# only, TLS forced, storage and Performance Insights encrypted with the stack's
# key, the master password managed by RDS in Secrets Manager, IAM database
# authentication for the service's own least-privilege role, point-in-time
# recovery, deletion protection and a final snapshot, logs in CloudWatch.

locals {
  db_identifier = "${var.name_prefix}-db"
  # log_connections per major version (the keys are the versions
  # var.db_engine_major_version allows): a boolean up to 17, from 18 a list of
  # stages, here the three that "on" meant before.
  log_connections = {
    "16" = "1"
    "17" = "1"
    "18" = "receipt,authentication,authorization"
  }
  # The RDS CA bundle's path in the image (Dockerfile), for PGSSLROOTCERT.
  rds_ca_bundle_path = "/usr/local/share/saldos/rds-ca-bundle.pem"
  # What rds-db:connect is granted on: the service's role on this instance only.
  # The RDS-managed master secret (JSON with username and password).
  master_secret_arn = try(aws_db_instance.main[0].master_user_secret[0].secret_arn, "")
  db_user_arn       = local.postgres ? "arn:${data.aws_partition.current.partition}:rds-db:${var.region}:${data.aws_caller_identity.current.account_id}:dbuser:${aws_db_instance.main[0].resource_id}/${var.db_app_user}" : ""
}

resource "aws_db_subnet_group" "main" {
  count      = local.postgres ? 1 : 0
  name       = "${var.name_prefix}-database"
  subnet_ids = aws_subnet.database[*].id
}

resource "aws_db_parameter_group" "main" {
  count  = local.postgres ? 1 : 0
  name   = "${var.name_prefix}-postgres${var.db_engine_major_version}"
  family = "postgres${var.db_engine_major_version}"

  # Every connection must use TLS; the service verifies the server (verify-full).
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  # Connections and slow statements in the exported log. PostgreSQL 18 made
  # log_connections a list of stages; a boolean is what 16 and 17 take.
  parameter {
    name  = "log_connections"
    value = local.log_connections[var.db_engine_major_version]
  }
  parameter {
    name  = "log_disconnections"
    value = "1"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "500"
  }
  # Statements logged: schema changes only, never the statements carrying data.
  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Created here (not by RDS) so the retention and the key are ours.
resource "aws_cloudwatch_log_group" "database" {
  for_each          = local.postgres ? toset(["postgresql", "upgrade", "iam-db-auth-error"]) : toset([])
  name              = "/aws/rds/instance/${local.db_identifier}/${each.key}"
  kms_key_id        = aws_kms_key.main.arn
  retention_in_days = var.log_retention_days
}

resource "aws_db_instance" "main" {
  count          = local.postgres ? 1 : 0
  identifier     = local.db_identifier
  engine         = "postgres"
  engine_version = var.db_engine_major_version
  instance_class = var.db_instance_class
  db_name        = var.db_name
  port           = local.db_port

  username                      = var.db_master_username
  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.main.arn
  # The service's role logs in with IAM tokens, never a password.
  iam_database_authentication_enabled = true

  multi_az               = true
  db_subnet_group_name   = aws_db_subnet_group.main[0].name
  vpc_security_group_ids = [aws_security_group.database[0].id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.main[0].name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  storage_type          = "gp3"
  allocated_storage     = var.db_allocated_storage_gib
  max_allocated_storage = var.db_max_allocated_storage_gib
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.main.arn

  backup_retention_period   = var.db_backup_retention_days
  backup_window             = "03:00-04:00"
  maintenance_window        = "sun:04:30-sun:05:30"
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = var.db_deletion_protection
  skip_final_snapshot       = var.db_skip_final_snapshot
  final_snapshot_identifier = "${local.db_identifier}-final"

  auto_minor_version_upgrade      = true
  allow_major_version_upgrade     = false
  apply_immediately               = false
  performance_insights_enabled    = true
  performance_insights_kms_key_id = aws_kms_key.main.arn
  monitoring_interval             = local.create_roles ? 30 : 0
  monitoring_role_arn             = local.create_roles ? aws_iam_role.rds_monitoring[0].arn : null
  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade", "iam-db-auth-error"]

  # The monitoring role must hold its policy before CreateDBInstance names it,
  # or RDS refuses it ("IAM role ARN value is invalid"): referring to the role
  # alone orders the instance after the role, not after the attachment.
  depends_on = [aws_cloudwatch_log_group.database, aws_iam_role_policy_attachment.rds_monitoring]
}
