# CloudWatch log groups: the service's JSON logs (short retention, exported to
# S3 by log_export.tf), WAF logs (the name must start with aws-waf-logs-), and
# rejected VPC flows. The collector's and RDS's groups sit with them
# (observability.tf, rds.tf).

resource "aws_cloudwatch_log_group" "app" {
  #checkov:skip=CKV_AWS_338:Short retention by design (app_log_retention_days); every line is exported to the S3 history bucket (log_export.tf).
  kms_key_id        = aws_kms_key.main.arn
  name              = "/ecs/${var.name_prefix}"
  retention_in_days = var.app_log_retention_days
}

resource "aws_cloudwatch_log_group" "waf" {
  kms_key_id        = aws_kms_key.main.arn
  name              = "aws-waf-logs-${var.name_prefix}"
  retention_in_days = var.log_retention_days
}

resource "aws_cloudwatch_log_group" "flow" {
  kms_key_id        = aws_kms_key.main.arn
  name              = "/vpc/${var.name_prefix}/flow"
  retention_in_days = var.log_retention_days
}
