output "alb_dns_name" {
  description = "DNS name of the load balancer."
  value       = aws_lb.main.dns_name
}

output "service_url" {
  description = "Base URL of the service (the domain when one is given)."
  value       = "${local.https_enabled ? "https" : "http"}://${local.dns_enabled ? var.domain_name : aws_lb.main.dns_name}"
}

output "ecr_repository_url" {
  description = "Where build_and_push.sh and the pipeline push images."
  value       = aws_ecr_repository.saldos.repository_url
}

output "cluster_name" {
  description = "ECS cluster name."
  value       = aws_ecs_cluster.main.name
}

output "service_name" {
  description = "ECS service name."
  value       = aws_ecs_service.app.name
}

output "task_definition_arn" {
  description = "The task definition revision Terraform registered last. The service runs what the pipeline last deployed; to roll out a change made here: aws ecs update-service --task-definition <this> (README, Who owns what)."
  value       = aws_ecs_task_definition.app.arn
}

output "log_group" {
  description = "CloudWatch log group of the service (short retention)."
  value       = aws_cloudwatch_log_group.app.name
}

output "log_history_bucket" {
  description = "S3 bucket holding the exported service logs."
  value       = aws_s3_bucket.history["logs"].id
}

output "cloudtrail_bucket" {
  description = "S3 bucket holding the CloudTrail files and their digests."
  value       = aws_s3_bucket.history["trail"].id
}

output "db_endpoint" {
  description = "RDS endpoint (host:port), postgres mode; null in journal mode."
  value       = one(aws_db_instance.main[*].endpoint)
}

output "db_master_secret_arn" {
  description = "Secrets Manager ARN of the RDS-managed master password (read by the migrate container only); null in journal mode."
  value       = local.postgres ? local.master_secret_arn : null
}

output "dashboard_url" {
  description = "CloudWatch dashboard of the service."
  value       = "https://${var.region}.console.aws.amazon.com/cloudwatch/home?region=${var.region}#dashboards/dashboard/${aws_cloudwatch_dashboard.main.dashboard_name}"
}

output "alarm_topic_arn" {
  description = "SNS topic every alarm notifies (subscribe more endpoints to it)."
  value       = aws_sns_topic.alarms.arn
}

output "pipeline_name" {
  description = "CodePipeline that builds and deploys main; null without enable_pipeline."
  value       = one(aws_codepipeline.main[*].name)
}
