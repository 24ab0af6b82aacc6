# Offline plans of the stack (`terraform test` with a mocked AWS provider:
# the provider's real schema and validations, no account). Run by
# tests/terraform/plan.sh when a local provider mirror exists. Both storage
# modes, the options, and the validations that must refuse a plan.

mock_provider "aws" {
  # Computed ARNs and ids the stack passes to ARN-validated arguments: the
  # mock's random strings would not pass the provider's validation.
  mock_resource "aws_acm_certificate" {
    override_during = plan
    defaults = {
      arn                       = "arn:aws:acm:us-east-1:123456789012:acm_certificate/mock"
      domain_validation_options = [{ domain_name = "saldos.example.com", resource_record_name = "_x.saldos.example.com", resource_record_type = "CNAME", resource_record_value = "_y.acm-validations.aws" }]
    }
  }
  mock_resource "aws_acm_certificate_validation" {
    override_during = plan
    defaults = {
      certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/mock"
    }
  }
  mock_resource "aws_appautoscaling_policy" {
    override_during = plan
    defaults = {
      arn = "arn:aws:appautoscaling:us-east-1:123456789012:appautoscaling_policy/mock"
    }
  }
  mock_resource "aws_appautoscaling_target" {
    override_during = plan
    defaults = {
      arn = "arn:aws:appautoscaling:us-east-1:123456789012:appautoscaling_target/mock"
    }
  }
  mock_resource "aws_cloudtrail" {
    override_during = plan
    defaults = {
      arn = "arn:aws:cloudtrail:us-east-1:123456789012:cloudtrail/mock"
    }
  }
  mock_resource "aws_cloudwatch_log_group" {
    override_during = plan
    defaults = {
      arn = "arn:aws:cloudwatch:us-east-1:123456789012:cloudwatch_log_group/mock"
    }
  }
  mock_resource "aws_cloudwatch_metric_alarm" {
    override_during = plan
    defaults = {
      arn = "arn:aws:cloudwatch:us-east-1:123456789012:cloudwatch_metric_alarm/mock"
    }
  }
  mock_resource "aws_codebuild_project" {
    override_during = plan
    defaults = {
      arn = "arn:aws:codebuild:us-east-1:123456789012:codebuild_project/mock"
    }
  }
  mock_resource "aws_codepipeline" {
    override_during = plan
    defaults = {
      arn = "arn:aws:codepipeline:us-east-1:123456789012:codepipeline/mock"
    }
  }
  mock_resource "aws_db_instance" {
    override_during = plan
    defaults = {
      arn                = "arn:aws:db:us-east-1:123456789012:db_instance/mock"
      master_user_secret = [{ secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mock", kms_key_id = "mock", secret_status = "active" }]
      resource_id        = "db-MOCK"
    }
  }
  mock_resource "aws_db_parameter_group" {
    override_during = plan
    defaults = {
      arn = "arn:aws:db:us-east-1:123456789012:db_parameter_group/mock"
    }
  }
  mock_resource "aws_db_subnet_group" {
    override_during = plan
    defaults = {
      arn = "arn:aws:db:us-east-1:123456789012:db_subnet_group/mock"
    }
  }
  mock_resource "aws_default_security_group" {
    override_during = plan
    defaults = {
      arn = "arn:aws:default:us-east-1:123456789012:default_security_group/mock"
    }
  }
  mock_resource "aws_ecr_repository" {
    override_during = plan
    defaults = {
      arn            = "arn:aws:ecr:us-east-1:123456789012:ecr_repository/mock"
      repository_url = "123456789012.dkr.ecr.us-east-1.amazonaws.com/saldos"
    }
  }
  mock_resource "aws_ecs_cluster" {
    override_during = plan
    defaults = {
      arn = "arn:aws:ecs:us-east-1:123456789012:ecs_cluster/mock"
    }
  }
  mock_resource "aws_ecs_service" {
    override_during = plan
    defaults = {
      id = "arn:aws:ecs:us-east-1:123456789012:service/mock/mock"
    }
  }
  mock_resource "aws_ecs_task_definition" {
    override_during = plan
    defaults = {
      arn = "arn:aws:ecs:us-east-1:123456789012:ecs_task_definition/mock"
    }
  }
  mock_resource "aws_efs_access_point" {
    override_during = plan
    defaults = {
      arn = "arn:aws:efs:us-east-1:123456789012:efs_access_point/mock"
    }
  }
  mock_resource "aws_efs_file_system" {
    override_during = plan
    defaults = {
      arn = "arn:aws:efs:us-east-1:123456789012:efs_file_system/mock"
    }
  }
  mock_resource "aws_flow_log" {
    override_during = plan
    defaults = {
      arn = "arn:aws:flow:us-east-1:123456789012:flow_log/mock"
    }
  }
  mock_resource "aws_iam_role" {
    override_during = plan
    defaults = {
      arn = "arn:aws:iam:us-east-1:123456789012:iam_role/mock"
    }
  }
  mock_resource "aws_internet_gateway" {
    override_during = plan
    defaults = {
      arn = "arn:aws:internet:us-east-1:123456789012:internet_gateway/mock"
    }
  }
  mock_resource "aws_kinesis_firehose_delivery_stream" {
    override_during = plan
    defaults = {
      arn = "arn:aws:kinesis:us-east-1:123456789012:kinesis_firehose_delivery_stream/mock"
    }
  }
  mock_resource "aws_kms_alias" {
    override_during = plan
    defaults = {
      arn = "arn:aws:kms:us-east-1:123456789012:kms_alias/mock"
    }
  }
  mock_resource "aws_kms_key" {
    override_during = plan
    defaults = {
      arn = "arn:aws:kms:us-east-1:123456789012:kms_key/mock"
    }
  }
  mock_resource "aws_lb" {
    override_during = plan
    defaults = {
      arn = "arn:aws:lb:us-east-1:123456789012:lb/mock"
    }
  }
  mock_resource "aws_lb_listener" {
    override_during = plan
    defaults = {
      arn = "arn:aws:lb:us-east-1:123456789012:lb_listener/mock"
    }
  }
  mock_resource "aws_lb_target_group" {
    override_during = plan
    defaults = {
      arn = "arn:aws:lb:us-east-1:123456789012:lb_target_group/mock"
    }
  }
  mock_resource "aws_route_table" {
    override_during = plan
    defaults = {
      arn = "arn:aws:route:us-east-1:123456789012:route_table/mock"
    }
  }
  mock_resource "aws_s3_bucket" {
    override_during = plan
    defaults = {
      arn = "arn:aws:s3:us-east-1:123456789012:s3_bucket/mock"
    }
  }
  mock_resource "aws_security_group" {
    override_during = plan
    defaults = {
      arn = "arn:aws:security:us-east-1:123456789012:security_group/mock"
    }
  }
  mock_resource "aws_sns_topic" {
    override_during = plan
    defaults = {
      arn = "arn:aws:sns:us-east-1:123456789012:sns_topic/mock"
    }
  }
  mock_resource "aws_sns_topic_subscription" {
    override_during = plan
    defaults = {
      arn = "arn:aws:sns:us-east-1:123456789012:sns_topic_subscription/mock"
    }
  }
  mock_resource "aws_subnet" {
    override_during = plan
    defaults = {
      arn = "arn:aws:subnet:us-east-1:123456789012:subnet/mock"
    }
  }
  mock_resource "aws_vpc" {
    override_during = plan
    defaults = {
      arn = "arn:aws:vpc:us-east-1:123456789012:vpc/mock"
    }
  }
  mock_resource "aws_vpc_endpoint" {
    override_during = plan
    defaults = {
      arn = "arn:aws:vpc:us-east-1:123456789012:vpc_endpoint/mock"
    }
  }
  mock_resource "aws_vpc_security_group_egress_rule" {
    override_during = plan
    defaults = {
      arn = "arn:aws:vpc:us-east-1:123456789012:vpc_security_group_egress_rule/mock"
    }
  }
  mock_resource "aws_vpc_security_group_ingress_rule" {
    override_during = plan
    defaults = {
      arn = "arn:aws:vpc:us-east-1:123456789012:vpc_security_group_ingress_rule/mock"
    }
  }
  mock_resource "aws_wafv2_web_acl" {
    override_during = plan
    defaults = {
      arn = "arn:aws:wafv2:us-east-1:123456789012:wafv2_web_acl/mock"
    }
  }

  mock_data "aws_availability_zones" {
    defaults = { names = ["us-east-1a", "us-east-1b", "us-east-1c"] }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
}

variables {
  image_tag    = "0123456789ab"
  jwt_issuer   = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Example"
  jwt_audience = "client"
  jwks_url     = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Example/.well-known/jwks.json"
}

run "postgres_by_default" {
  command = plan
  assert {
    condition     = [for c in jsondecode(aws_ecs_task_definition.app.container_definitions) : c.name] == ["migrate", "collector", "saldos"]
    error_message = "postgres tasks: migrate, collector, saldos"
  }
  assert {
    condition     = aws_ecs_service.app.desired_count == 3 && aws_ecs_service.app.deployment_minimum_healthy_percent == 50 && aws_ecs_service.app.deployment_maximum_percent == 200
    error_message = "postgres deployment settings"
  }
  assert {
    condition     = length(aws_db_instance.main) == 1 && aws_db_instance.main[0].multi_az && length(aws_efs_file_system.journal) == 0
    error_message = "RDS, no EFS"
  }
  assert {
    condition     = length(aws_appautoscaling_policy.app) == 2 && length(aws_cloudwatch_metric_alarm.metric) == 6
    error_message = "autoscaling and database alarms"
  }
  assert {
    condition     = contains(keys(aws_vpc_endpoint.interface), "secretsmanager") && contains(keys(aws_vpc_endpoint.interface), "cognito-idp")
    error_message = "endpoints"
  }
  assert {
    condition     = length(aws_codepipeline.main) == 0 && length(aws_s3_bucket.history) == 2
    error_message = "no pipeline by default"
  }
  assert {
    condition = [
      for c in jsondecode(aws_ecs_task_definition.app.container_definitions) : c.secrets if c.name == "migrate"
    ] == [[{ name = "PGPASSWORD", valueFrom = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mock:password::" }]]
    error_message = "the master password reaches the migrate container through secrets"
  }
  assert {
    condition = [
      for c in jsondecode(aws_ecs_task_definition.app.container_definitions) : {
        for e in c.environment : e.name => e.value if contains(["PGUSER", "SALDOS_DB_AUTH", "PGSSLMODE"], e.name)
      } if c.name == "saldos"
    ] == [{ PGUSER = "saldos", SALDOS_DB_AUTH = "rds-iam", PGSSLMODE = "verify-full" }]
    error_message = "the service logs in as its own role with IAM tokens over verified TLS"
  }
  assert {
    # The collector's configuration, as the collector reads it.
    condition = [
      for c in jsondecode(aws_ecs_task_definition.app.container_definitions) :
      yamldecode(c.environment[0].value).receivers.prometheus.config.scrape_configs[0].static_configs[0].targets if c.name == "collector"
    ] == [["127.0.0.1:9464"]]
    error_message = "the collector scrapes the service's metrics listener"
  }
  assert {
    # Liveness: a database failover fails readiness on every task at once and
    # must not make ECS replace them all (SPEC section 3; terraform/README.md,
    # "Failover"); liveness fails only for a broken task.
    condition     = aws_lb_target_group.app.health_check[0].path == "/health/live" && aws_lb_target_group.app.health_check[0].matcher == "200"
    error_message = "the load balancer checks liveness (/health/live), never readiness"
  }
  assert {
    condition = [
      for c in jsondecode(aws_ecs_task_definition.app.container_definitions) : {
        for e in c.environment : e.name => e.value if e.name == "SALDOS_DB_WAIT"
      } if c.name == "migrate"
    ] == [{ SALDOS_DB_WAIT = "300s" }] && aws_ecs_service.app.health_check_grace_period_seconds == 360
    error_message = "migrate waits out a failover (300 s) and ECS ignores health checks for that and the service's start"
  }
  assert {
    condition     = [for p in aws_db_parameter_group.main[0].parameter : p.value if p.name == "log_connections"] == ["1"]
    error_message = "PostgreSQL 17 takes log_connections as a boolean"
  }
  assert {
    condition     = [for f in aws_wafv2_web_acl_logging_configuration.main.redacted_fields : f.single_header[0].name] == ["authorization", "cookie"]
    error_message = "WAF logs redact the bearer token and cookies"
  }
  assert {
    condition     = length(data.aws_elb_service_account.current) == 1
    error_message = "us-east-1 delivers ALB access logs through its Elastic Load Balancing account"
  }
  assert {
    condition     = aws_kinesis_firehose_delivery_stream.logs[0].extended_s3_configuration[0].file_extension == ".gz"
    error_message = "the history objects end in .gz"
  }
  assert {
    condition     = length(aws_cloudtrail.main) == 1 && length(aws_ecr_pull_through_cache_rule.public) == 1 && length(aws_appautoscaling_target.app) == 1
    error_message = "nothing is left out unless emulator_unsupported_off is set"
  }
}

run "postgres_18" {
  command = plan
  variables {
    db_engine_major_version = "18"
  }
  assert {
    condition     = [for p in aws_db_parameter_group.main[0].parameter : p.value if p.name == "log_connections"] == ["receipt,authentication,authorization"]
    error_message = "PostgreSQL 18 takes log_connections as a list of stages"
  }
}

run "unknown_engine_version_refused" {
  command = plan
  variables {
    db_engine_major_version = "15"
  }
  expect_failures = [var.db_engine_major_version]
}

run "region_opened_after_august_2022" {
  command = plan
  variables {
    region     = "ap-south-2"
    jwt_issuer = "https://cognito-idp.ap-south-2.amazonaws.com/ap-south-2_Example"
    jwks_url   = "https://cognito-idp.ap-south-2.amazonaws.com/ap-south-2_Example/.well-known/jwks.json"
  }
  assert {
    condition     = length(data.aws_elb_service_account.current) == 0
    error_message = "a region opened after August 2022 has no Elastic Load Balancing account: the service principal delivers its logs"
  }
}

run "emulator_leaves_out_its_list_only" {
  command = plan
  variables {
    emulator_unsupported_off = true
  }
  assert {
    condition     = length(aws_cloudtrail.main) == 0 && length(aws_ecr_pull_through_cache_rule.public) == 0 && length(aws_ecr_repository_creation_template.pull_through) == 0 && length(aws_appautoscaling_target.app) == 0 && length(aws_appautoscaling_policy.app) == 0
    error_message = "the emulator's list is left out"
  }
  assert {
    condition     = length(aws_db_instance.main) == 1 && aws_lb.main.enable_deletion_protection && length(aws_wafv2_web_acl_logging_configuration.main.redacted_fields) == 2
    error_message = "everything else stays"
  }
}

run "journal_mode" {
  command = plan
  variables {
    storage               = "journal"
    allow_unauthenticated = true
    jwt_issuer            = ""
    jwt_audience          = ""
    jwks_url              = ""
  }
  assert {
    condition     = [for c in jsondecode(aws_ecs_task_definition.app.container_definitions) : c.name] == ["collector", "saldos"]
    error_message = "journal tasks: collector, saldos"
  }
  assert {
    condition     = aws_ecs_service.app.desired_count == 1 && aws_ecs_service.app.deployment_minimum_healthy_percent == 0 && aws_ecs_service.app.deployment_maximum_percent == 100
    error_message = "one writer"
  }
  assert {
    condition     = length(aws_db_instance.main) == 0 && length(aws_efs_file_system.journal) == 1 && length(aws_appautoscaling_target.app) == 0 && length(aws_cloudwatch_metric_alarm.metric) == 3
    error_message = "EFS; no RDS, autoscaling or database alarms"
  }
  assert {
    condition     = [for e in jsondecode(aws_ecs_task_definition.app.container_definitions)[1].environment : e.value if e.name == "SALDOS_AUTH"] == ["none"]
    error_message = "auth off when allowed"
  }
}

run "authentication_required" {
  command = plan
  variables {
    jwks_url = ""
  }
  expect_failures = [var.allow_unauthenticated]
}

run "foreign_issuer_refused" {
  command = plan
  variables {
    jwks_url = "https://example.auth0.com/.well-known/jwks.json"
  }
  expect_failures = [var.jwks_url]
}

run "pipeline_and_domain" {
  command = plan
  variables {
    enable_pipeline         = true
    codestar_connection_arn = "arn:aws:codestar-connections:us-east-1:123456789012:connection/abc"
    repository_id           = "banco-etheria/saldos"
    rds_ca_bundle_sha256    = "0000000000000000000000000000000000000000000000000000000000000000"
    domain_name             = "saldos.example.com"
    hosted_zone_id          = "Z0123456789ABC"
  }
  assert {
    condition     = length(aws_codepipeline.main) == 1 && length(aws_s3_bucket.history) == 3 && length(aws_lb_listener.https) == 1
    error_message = "pipeline, artifacts bucket, HTTPS"
  }
}

run "pipeline_needs_checksum" {
  command = plan
  variables {
    enable_pipeline         = true
    codestar_connection_arn = "arn:aws:codestar-connections:us-east-1:123456789012:connection/abc"
    repository_id           = "banco-etheria/saldos"
  }
  expect_failures = [var.enable_pipeline]
}
