# The service's log group keeps a short retention (app_log_retention_days);
# every line is also streamed, as CloudWatch Logs delivers it (gzip'd JSON
# batches), by a subscription filter to Kinesis Data Firehose and on to the
# log history bucket (history.tf), as objects ending in .gz. Needs roles:
# skipped when role ARNs are given (AWS Academy), like the VPC flow logs.

locals {
  export_logs = local.create_roles
}

data "aws_iam_policy_document" "firehose_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["firehose.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "sts:ExternalId"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "firehose" {
  count              = local.export_logs ? 1 : 0
  name_prefix        = "${var.name_prefix}-firehose-"
  assume_role_policy = data.aws_iam_policy_document.firehose_assume.json
}

data "aws_iam_policy_document" "firehose" {
  statement {
    sid       = "WriteTheHistoryBucket"
    actions   = ["s3:AbortMultipartUpload", "s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:PutObject"]
    resources = [aws_s3_bucket.history["logs"].arn, "${aws_s3_bucket.history["logs"].arn}/*"]
  }
  statement {
    sid       = "EncryptForTheBucket"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com", "firehose.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "firehose" {
  count  = local.export_logs ? 1 : 0
  name   = "write-log-history"
  role   = aws_iam_role.firehose[0].id
  policy = data.aws_iam_policy_document.firehose.json
}

resource "aws_kinesis_firehose_delivery_stream" "logs" {
  count       = local.export_logs ? 1 : 0
  name        = "${var.name_prefix}-logs"
  destination = "extended_s3"

  server_side_encryption {
    enabled  = true
    key_type = "CUSTOMER_MANAGED_CMK"
    key_arn  = aws_kms_key.main.arn
  }

  extended_s3_configuration {
    role_arn            = aws_iam_role.firehose[0].arn
    bucket_arn          = aws_s3_bucket.history["logs"].arn
    kms_key_arn         = aws_kms_key.main.arn
    prefix              = "app/!{timestamp:yyyy/MM/dd}/"
    error_output_prefix = "errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/"
    buffering_size      = 64
    buffering_interval  = 300
    # CloudWatch Logs already gzips what it delivers: Firehose writes it as is,
    # named for what it is.
    compression_format = "UNCOMPRESSED"
    file_extension     = ".gz"
  }
}

data "aws_iam_policy_document" "logs_to_firehose_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "StringLike"
      variable = "aws:SourceArn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:*"]
    }
  }
}

resource "aws_iam_role" "logs_to_firehose" {
  count              = local.export_logs ? 1 : 0
  name_prefix        = "${var.name_prefix}-logexp-"
  assume_role_policy = data.aws_iam_policy_document.logs_to_firehose_assume.json
}

data "aws_iam_policy_document" "logs_to_firehose" {
  count = local.export_logs ? 1 : 0
  statement {
    actions   = ["firehose:PutRecord", "firehose:PutRecordBatch"]
    resources = [aws_kinesis_firehose_delivery_stream.logs[0].arn]
  }
}

resource "aws_iam_role_policy" "logs_to_firehose" {
  count  = local.export_logs ? 1 : 0
  name   = "put-into-the-log-stream"
  role   = aws_iam_role.logs_to_firehose[0].id
  policy = data.aws_iam_policy_document.logs_to_firehose[0].json
}

resource "aws_cloudwatch_log_subscription_filter" "app_to_history" {
  count           = local.export_logs ? 1 : 0
  name            = "${var.name_prefix}-to-s3"
  log_group_name  = aws_cloudwatch_log_group.app.name
  filter_pattern  = "" # every line
  destination_arn = aws_kinesis_firehose_delivery_stream.logs[0].arn
  role_arn        = aws_iam_role.logs_to_firehose[0].arn
}
