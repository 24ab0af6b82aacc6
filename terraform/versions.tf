terraform {
  # 1.9: variable validations that refer to other variables.
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = "saldos"
      ManagedBy = "terraform"
      Name      = var.name_prefix
    }
  }
}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:The stack takes exactly the first three zones (slice in locals), so new zones never expand it.
  state = "available"
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  azs            = slice(data.aws_availability_zones.available.names, 0, 3)
  container_port = 5000
  db_port        = 5432
  # The app keeps idle keep-alive connections 90 s; the ALB must close first.
  app_keepalive_idle_s = 90
  # The app drains for SALDOS_SHUTDOWN_GRACE; ECS waits stop_timeout_s.
  shutdown_grace_s = 20
  stop_timeout_s   = 30
  create_roles     = var.execution_role_arn == "" || var.task_role_arn == ""
  execution_role   = var.execution_role_arn != "" ? var.execution_role_arn : aws_iam_role.execution[0].arn
  task_role        = var.task_role_arn != "" ? var.task_role_arn : aws_iam_role.task[0].arn
  image            = "${aws_ecr_repository.saldos.repository_url}:${var.image_tag}"

  # Storage mode switches: postgres runs several tasks on RDS, journal one
  # task on EFS.
  postgres = var.storage == "postgres"
  journal  = var.storage == "journal"

  # HTTPS with the given certificate or the one dns.tf makes for domain_name.
  https_enabled   = var.certificate_arn != "" || var.domain_name != ""
  certificate_arn = var.certificate_arn != "" ? var.certificate_arn : try(aws_acm_certificate_validation.service[0].certificate_arn, "")
}
