terraform {
  required_version = ">= 1.7"

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
  # The app keeps idle keep-alive connections 90 s; the ALB must close first.
  app_keepalive_idle_s = 90
  # The app drains for SALDOS_SHUTDOWN_GRACE; ECS waits stop_timeout_s.
  shutdown_grace_s = 20
  stop_timeout_s   = 30
  create_roles     = var.execution_role_arn == "" || var.task_role_arn == ""
  execution_role   = var.execution_role_arn != "" ? var.execution_role_arn : aws_iam_role.execution[0].arn
  task_role        = var.task_role_arn != "" ? var.task_role_arn : aws_iam_role.task[0].arn
  image            = "${aws_ecr_repository.saldos.repository_url}:${var.image_tag}"
}
