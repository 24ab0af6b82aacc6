# CloudWatch log groups: the service's JSON logs, WAF logs (the name must start
# with aws-waf-logs-), and rejected VPC flows.

resource "aws_cloudwatch_log_group" "app" {
  kms_key_id        = aws_kms_key.main.arn
  name              = "/ecs/${var.name_prefix}"
  retention_in_days = var.log_retention_days
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
