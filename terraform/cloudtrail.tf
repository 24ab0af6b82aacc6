# CloudTrail: one multi-region trail of write-only management events (every
# change to the account, no read noise), KMS-encrypted, with log file
# validation (digest files prove nothing was altered or deleted), delivered to
# its own history bucket (history.tf).

locals {
  trail_name = "${var.name_prefix}-trail"
  trail_arn  = "arn:${data.aws_partition.current.partition}:cloudtrail:${var.region}:${data.aws_caller_identity.current.account_id}:trail/${local.trail_name}"
}

resource "aws_cloudtrail" "main" {
  count = var.emulator_unsupported_off ? 0 : 1
  #checkov:skip=CKV_AWS_252:No SNS notification per delivered file; the files are read when auditing, not as they arrive.
  #checkov:skip=CKV2_AWS_10:The trail goes to S3 for history; CloudWatch Logs delivery would double its cost without a consumer (alarms read service metrics).
  name                          = local.trail_name
  s3_bucket_name                = aws_s3_bucket.history["trail"].id
  kms_key_id                    = aws_kms_key.main.arn
  is_multi_region_trail         = true
  include_global_service_events = true
  enable_log_file_validation    = true

  event_selector {
    read_write_type           = "WriteOnly"
    include_management_events = true
  }

  depends_on = [aws_s3_bucket_policy.history]
}

data "aws_iam_policy_document" "trail_bucket" {
  source_policy_documents = [data.aws_iam_policy_document.tls_only["trail"].json]

  statement {
    sid       = "CloudTrailChecksTheAcl"
    actions   = ["s3:GetBucketAcl"]
    resources = [aws_s3_bucket.history["trail"].arn]
    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceArn"
      values   = [local.trail_arn]
    }
  }
  statement {
    sid       = "CloudTrailWrites"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.history["trail"].arn}/AWSLogs/${data.aws_caller_identity.current.account_id}/*"]
    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "s3:x-amz-acl"
      values   = ["bucket-owner-full-control"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceArn"
      values   = [local.trail_arn]
    }
  }
}
