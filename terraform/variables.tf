variable "region" {
  type        = string
  description = "AWS region to deploy into."
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like us-east-1."
  }
}

variable "name_prefix" {
  type        = string
  description = "Prefix for every resource name (lowercase letters, digits, hyphens)."
  default     = "saldos"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name_prefix))
    error_message = "name_prefix must be 2-21 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR block of the dedicated VPC (a /16 is split into public, private and database /20s)."
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 16
    error_message = "vpc_cidr must be a valid CIDR block of /16 or larger."
  }
}

variable "task_cpu" {
  type        = number
  description = "Fargate task CPU units (256 = 0.25 vCPU … 16384 = 16 vCPU)."
  default     = 1024

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu)
    error_message = "task_cpu must be one of 256, 512, 1024, 2048, 4096, 8192, 16384."
  }
}

variable "task_memory" {
  type        = number
  description = "Fargate task memory in MiB; must be valid for task_cpu."
  default     = 2048

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 122880
    error_message = "task_memory must be between 512 and 122880 MiB."
  }
}

variable "image_tag" {
  type        = string
  description = "Tag of the image in the ECR repository (build_and_push.sh uses the commit SHA)."

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid, immutable tag (not 'latest')."
  }
}

variable "cpu_architecture" {
  type        = string
  description = "CPU architecture of the image and the task: X86_64 or ARM64."
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate ARN for the HTTPS listener; empty serves plain HTTP only."
  default     = ""

  validation {
    condition     = var.certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be empty or an ACM certificate ARN."
  }
}

variable "execution_role_arn" {
  type        = string
  description = "Existing ECS task execution role ARN (for example an AWS Academy LabRole); empty creates one."
  default     = ""

  validation {
    condition     = var.execution_role_arn == "" || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.execution_role_arn))
    error_message = "execution_role_arn must be empty or an IAM role ARN."
  }
}

variable "task_role_arn" {
  type        = string
  description = "Existing ECS task role ARN (needs what iam.tf grants: rds-db:connect or EFS, X-Ray, the metrics log group); empty creates one."
  default     = ""

  validation {
    condition     = var.task_role_arn == "" || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.task_role_arn))
    error_message = "task_role_arn must be empty or an IAM role ARN."
  }
}

variable "log_retention_days" {
  type        = number
  description = "Retention of the WAF, VPC flow, RDS and collector logs and of the ALB access logs, in days."
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, … 3653)."
  }
}

variable "waf_rate_limit" {
  type        = number
  description = "Requests per 5 minutes from one IP before the WAF blocks it."
  default     = 20000

  validation {
    condition     = var.waf_rate_limit >= 100 && var.waf_rate_limit <= 2000000000
    error_message = "waf_rate_limit must be between 100 and 2000000000."
  }
}

variable "alb_idle_timeout_s" {
  type        = number
  description = "ALB idle timeout in seconds; must stay below the app's 90 s keep-alive."
  default     = 60

  validation {
    condition     = var.alb_idle_timeout_s >= 1 && var.alb_idle_timeout_s < 90
    error_message = "alb_idle_timeout_s must be 1-89 (the app keeps idle connections 90 s)."
  }
}

variable "health_check_grace_s" {
  type        = number
  description = "Seconds ECS ignores failing health checks after a task's service starts (journal recovery, or the wait for the migrations); in postgres mode the stack adds the migrate container's database wait (local.migrate_db_wait_s)."
  default     = 60

  validation {
    condition     = var.health_check_grace_s >= 0 && var.health_check_grace_s <= 2147483647
    error_message = "health_check_grace_s must be a non-negative number of seconds."
  }
}

# --- storage mode -------------------------------------------------------------

variable "storage" {
  type        = string
  description = "Where balances live: postgres (RDS Multi-AZ, several tasks) or journal (one task, its journal on EFS)."
  default     = "postgres"

  validation {
    condition     = contains(["postgres", "journal"], var.storage)
    error_message = "storage must be postgres or journal."
  }
}

variable "desired_count" {
  type        = number
  description = "Tasks in postgres mode when the stack is applied (spread over the three AZs); journal mode always runs one."
  default     = 3

  validation {
    condition     = var.desired_count >= 2 && var.desired_count >= var.autoscaling_min_tasks && var.desired_count <= var.autoscaling_max_tasks
    error_message = "desired_count must be at least 2 (postgres mode is highly available only with two tasks or more) and within the autoscaling bounds."
  }
}

variable "autoscaling_min_tasks" {
  type        = number
  description = "Fewest tasks autoscaling keeps in postgres mode."
  default     = 3

  validation {
    condition     = var.autoscaling_min_tasks >= 2
    error_message = "autoscaling_min_tasks must be at least 2 (one task per AZ failure)."
  }
}

variable "autoscaling_max_tasks" {
  type        = number
  description = "Most tasks autoscaling starts in postgres mode (each holds up to db_connections database connections)."
  default     = 12

  validation {
    condition     = var.autoscaling_max_tasks >= var.autoscaling_min_tasks && var.autoscaling_max_tasks <= 100
    error_message = "autoscaling_max_tasks must be at least autoscaling_min_tasks and at most 100."
  }
}

variable "autoscaling_cpu_target_percent" {
  type        = number
  description = "Average task CPU utilisation target-tracking autoscaling aims for."
  default     = 60

  validation {
    condition     = var.autoscaling_cpu_target_percent >= 10 && var.autoscaling_cpu_target_percent <= 90
    error_message = "autoscaling_cpu_target_percent must be 10-90."
  }
}

variable "autoscaling_requests_per_target" {
  type        = number
  description = "ALB requests per target per minute target-tracking autoscaling aims for."
  default     = 6000

  validation {
    condition     = var.autoscaling_requests_per_target >= 10
    error_message = "autoscaling_requests_per_target must be at least 10."
  }
}

# --- database (postgres mode) -------------------------------------------------

variable "db_engine_major_version" {
  type        = string
  description = "PostgreSQL major version of the RDS instance (RDS applies the newest minor version of it). Each allowed version has its log_connections value in rds.tf (a boolean up to 17, a list from 18)."
  default     = "17"

  validation {
    condition     = contains(["16", "17", "18"], var.db_engine_major_version)
    error_message = "db_engine_major_version must be 16, 17 or 18 (a version rds.tf knows how to set log_connections for)."
  }
}

variable "db_instance_class" {
  type        = string
  description = "RDS instance class (Multi-AZ doubles it: a primary and a standby). Burstable db.t* classes run out of CPU credits under sustained load."
  default     = "db.m7g.large"

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.db_instance_class))
    error_message = "db_instance_class must be an RDS instance class such as db.m7g.large."
  }
}

variable "db_allocated_storage_gib" {
  type        = number
  description = "Initial gp3 storage of the database in GiB."
  default     = 50

  validation {
    condition     = var.db_allocated_storage_gib >= 20 && var.db_allocated_storage_gib <= 65536
    error_message = "db_allocated_storage_gib must be 20-65536."
  }
}

variable "db_max_allocated_storage_gib" {
  type        = number
  description = "Ceiling of storage autoscaling in GiB."
  default     = 500

  validation {
    condition     = var.db_max_allocated_storage_gib >= var.db_allocated_storage_gib && var.db_max_allocated_storage_gib <= 65536
    error_message = "db_max_allocated_storage_gib must be at least db_allocated_storage_gib and at most 65536."
  }
}

variable "db_backup_retention_days" {
  type        = number
  description = "Days of automated backups (point-in-time recovery window)."
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be 7-35."
  }
}

variable "db_deletion_protection" {
  type        = bool
  description = "Refuse to delete the database (turn off, apply, then destroy)."
  default     = true
}

variable "db_skip_final_snapshot" {
  type        = bool
  description = "Delete the database without a final snapshot (never for real money)."
  default     = false
}

variable "db_name" {
  type        = string
  description = "Name of the database the service uses."
  default     = "saldos"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.db_name))
    error_message = "db_name must be a lowercase PostgreSQL identifier."
  }
}

variable "db_master_username" {
  type        = string
  description = "RDS master user: used only by the migrate container, its password in the RDS-managed secret."
  default     = "saldos_admin"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.db_master_username)) && var.db_master_username != var.db_app_user
    error_message = "db_master_username must be a lowercase PostgreSQL identifier different from db_app_user."
  }
}

variable "db_app_user" {
  type        = string
  description = "Least-privilege role the service connects as, with RDS IAM authentication (saldos migrate --app-role)."
  default     = "saldos"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.db_app_user))
    error_message = "db_app_user must be a lowercase PostgreSQL identifier."
  }
}

variable "db_connections" {
  type        = number
  description = "Database connections per task (SALDOS_DB_CONNECTIONS); tasks x this must stay under the instance's max_connections."
  default     = 8

  validation {
    condition     = var.db_connections >= 1 && var.db_connections <= 64
    error_message = "db_connections must be 1-64."
  }
}

variable "db_timeout_s" {
  type        = number
  description = "Seconds a request may wait on the database before it gets 503 (SALDOS_DB_TIMEOUT)."
  default     = 5

  validation {
    condition     = var.db_timeout_s >= 1 && var.db_timeout_s < 20
    error_message = "db_timeout_s must be 1-19 (below the 20 s shutdown grace)."
  }
}

# --- authentication -----------------------------------------------------------

variable "jwt_issuer" {
  type        = string
  description = "JWT issuer (iss) the service accepts, e.g. https://cognito-idp.<region>.amazonaws.com/<user pool id>."
  default     = ""

  validation {
    condition     = var.jwt_issuer == "" || can(regex("^https://[^\\s]+$", var.jwt_issuer))
    error_message = "jwt_issuer must be empty or an https:// URL."
  }
}

variable "jwt_audience" {
  type        = string
  description = "JWT audience (aud) the service accepts (a Cognito app client id, for instance)."
  default     = ""

  validation {
    condition     = var.jwt_audience == "" || can(regex("^[^\\s]{1,256}$", var.jwt_audience))
    error_message = "jwt_audience must be empty or one word of at most 256 characters."
  }
}

variable "jwks_url" {
  type        = string
  description = "The issuer's JWKS URL. The tasks have no internet route: it must be a Cognito user pool of this region, reached through the cognito-idp VPC endpoint."
  default     = ""

  validation {
    condition     = var.jwks_url == "" || can(regex("^https://cognito-idp\\.${var.region}\\.amazonaws\\.com/[A-Za-z0-9_-]+/\\.well-known/jwks\\.json$", var.jwks_url))
    error_message = "jwks_url must be empty or https://cognito-idp.<this region>.amazonaws.com/<user pool id>/.well-known/jwks.json (no NAT: other issuers are unreachable)."
  }
}

variable "allow_unauthenticated" {
  type        = bool
  description = "Deploy with SALDOS_AUTH=none. Only for demos: without it the JWT settings are required."
  default     = false

  validation {
    condition     = var.allow_unauthenticated || (var.jwt_issuer != "" && var.jwt_audience != "" && var.jwks_url != "")
    error_message = "Authentication is on: set jwt_issuer, jwt_audience and jwks_url, or set allow_unauthenticated = true explicitly."
  }
}

# --- observability ------------------------------------------------------------

variable "trace_sampling_ratio" {
  type        = number
  description = "Fraction of root requests traced (OTEL_TRACES_SAMPLER_ARG, parent-based)."
  default     = 0.05

  validation {
    condition     = var.trace_sampling_ratio >= 0 && var.trace_sampling_ratio <= 1
    error_message = "trace_sampling_ratio must be between 0 and 1."
  }
}

variable "collector_version" {
  type        = string
  description = "Version of the AWS Distro for OpenTelemetry collector image (pulled through the ECR pull-through cache of public.ecr.aws)."
  default     = "v0.43.3"

  validation {
    condition     = can(regex("^v[0-9]+\\.[0-9]+\\.[0-9]+$", var.collector_version))
    error_message = "collector_version must be a pinned release such as v0.43.3, never latest."
  }
}

variable "alarm_email" {
  type        = string
  description = "Address subscribed to the alarm topic (it must confirm); empty subscribes nobody."
  default     = ""

  validation {
    condition     = var.alarm_email == "" || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alarm_email))
    error_message = "alarm_email must be empty or an email address."
  }
}

variable "alarm_p99_latency_s" {
  type        = number
  description = "Alarm when the ALB's p99 target response time stays above this many seconds."
  default     = 0.5

  validation {
    condition     = var.alarm_p99_latency_s > 0 && var.alarm_p99_latency_s <= 60
    error_message = "alarm_p99_latency_s must be in (0, 60]."
  }
}

variable "alarm_5xx_percent" {
  type        = number
  description = "Alarm when 5xx answers exceed this share of requests."
  default     = 1

  validation {
    condition     = var.alarm_5xx_percent > 0 && var.alarm_5xx_percent <= 100
    error_message = "alarm_5xx_percent must be in (0, 100]."
  }
}

# --- logs ---------------------------------------------------------------------

variable "app_log_retention_days" {
  type        = number
  description = "Retention of the service's CloudWatch log group (short: history lives in the S3 export)."
  default     = 14

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90], var.app_log_retention_days)
    error_message = "app_log_retention_days must be 1, 3, 5, 7, 14, 30, 60 or 90 (short retention; S3 keeps the history)."
  }
}

variable "log_archive_after_days" {
  type        = number
  description = "Days after which exported logs and CloudTrail files move to S3 Glacier Deep Archive."
  default     = 90

  validation {
    condition     = var.log_archive_after_days >= 30
    error_message = "log_archive_after_days must be at least 30."
  }
}

variable "log_history_days" {
  type        = number
  description = "Days exported logs and CloudTrail files are kept in S3 before they expire."
  default     = 2557

  validation {
    condition     = var.log_history_days >= 365
    error_message = "log_history_days must be at least 365."
  }
}

# --- DNS and pipeline (optional) ----------------------------------------------

variable "domain_name" {
  type        = string
  description = "Public name of the service (e.g. saldos.example.com); with hosted_zone_id, a DNS-validated certificate and an alias record are created."
  default     = ""

  validation {
    condition     = var.domain_name == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.domain_name))
    error_message = "domain_name must be empty or a lowercase DNS name."
  }
}

variable "hosted_zone_id" {
  type        = string
  description = "Route 53 public hosted zone holding domain_name."
  default     = ""

  validation {
    condition     = var.hosted_zone_id == "" || can(regex("^Z[A-Z0-9]{1,31}$", var.hosted_zone_id))
    error_message = "hosted_zone_id must be empty or a Route 53 zone id (Z…)."
  }

  validation {
    condition     = (var.domain_name == "") == (var.hosted_zone_id == "") && (var.domain_name == "" || var.certificate_arn == "")
    error_message = "Give domain_name and hosted_zone_id together (the stack then makes the certificate), not with certificate_arn."
  }
}

variable "enable_pipeline" {
  type        = bool
  description = "Create CodePipeline + CodeBuild: build from the Git repository, push to ECR, deploy to ECS."
  default     = false

  validation {
    condition     = !var.enable_pipeline || (var.codestar_connection_arn != "" && var.repository_id != "" && (var.storage != "postgres" || var.rds_ca_bundle_sha256 != "") && var.execution_role_arn == "" && var.task_role_arn == "")
    error_message = "enable_pipeline needs codestar_connection_arn, repository_id, in postgres mode rds_ca_bundle_sha256, and the stack's own roles (no execution_role_arn / task_role_arn)."
  }
}

variable "codestar_connection_arn" {
  type        = string
  description = "CodeStar (CodeConnections) connection to the Git host, already authorised in the console."
  default     = ""

  validation {
    condition     = var.codestar_connection_arn == "" || can(regex("^arn:aws[a-z-]*:(codestar-connections|codeconnections):[a-z0-9-]+:[0-9]{12}:connection/", var.codestar_connection_arn))
    error_message = "codestar_connection_arn must be empty or a CodeStar/CodeConnections connection ARN."
  }
}

variable "repository_id" {
  type        = string
  description = "Git repository the pipeline builds, as owner/name."
  default     = ""

  validation {
    condition     = var.repository_id == "" || can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.repository_id))
    error_message = "repository_id must be empty or owner/name."
  }
}

variable "repository_branch" {
  type        = string
  description = "Branch whose commits the pipeline builds and deploys."
  default     = "main"

  validation {
    condition     = can(regex("^[A-Za-z0-9_./-]{1,255}$", var.repository_branch))
    error_message = "repository_branch must be a branch name."
  }
}

variable "rds_ca_bundle_sha256" {
  type        = string
  description = "SHA-256 of the RDS CA bundle (global-bundle.pem) the pipeline fetches into the image; required with the pipeline in postgres mode."
  default     = ""

  validation {
    condition     = var.rds_ca_bundle_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.rds_ca_bundle_sha256))
    error_message = "rds_ca_bundle_sha256 must be empty or 64 lowercase hex digits."
  }
}

# --- tests only ---------------------------------------------------------------

variable "emulator_unsupported_off" {
  type        = bool
  description = "Only for tests/terraform/apply.sh, which applies the stack to a local AWS emulator (moto): leaves out the resources the emulator cannot create, listed with the reason in local.emulator_unsupported. Never set it for AWS: it drops CloudTrail, autoscaling, the collector's image cache, the journal's backups and its file system policy."
  default     = false
}

locals {
  # What emulator_unsupported_off leaves out, and why (moto 5.2.1, the version
  # .ci/run installs; apply.sh prints this list). Every resource gated by the
  # variable is here and nothing else reads it (tests/terraform/test_wiring.py).
  emulator_unsupported = {
    "aws_appautoscaling_target.app"                     = "ListTagsForResource (Application Auto Scaling) is not implemented: HTTP 500 when the provider reads the target's tags"
    "aws_appautoscaling_policy.app"                     = "attached to aws_appautoscaling_target.app, which is left out"
    "aws_cloudtrail.main"                               = "StartLogging looks the trail up by name while the provider passes its ARN: HTTP 500 (KeyError), retried until the apply times out"
    "aws_ecr_pull_through_cache_rule.public"            = "CreatePullThroughCacheRule is not implemented: HTTP 500, retried until the apply times out"
    "aws_ecr_repository_creation_template.pull_through" = "CreateRepositoryCreationTemplate is not implemented: HTTP 500, retried until the apply times out"
    "aws_efs_backup_policy.journal"                     = "PutBackupPolicy is not implemented: HTTP 500, retried until the apply times out"
    "aws_efs_file_system_policy.journal"                = "DeleteFileSystemPolicy is not implemented: HTTP 500, the destroy fails"
  }
}
