# Buckets in S3: one for the service's exported logs (log_export.tf), one of
# CloudTrail's own (cloudtrail.tf) and, with the pipeline, one for its
# artifacts (pipeline.tf). All KMS-encrypted, versioned, TLS only, public
# access blocked; the history moves to Glacier Deep Archive after
# log_archive_after_days and expires after log_history_days, artifacts expire
# after 30 days.

locals {
  history = {
    prefix        = null
    archive_after = var.log_archive_after_days
    expire_after  = var.log_history_days
  }
  bucket_definitions = {
    logs      = merge(local.history, { prefix = "${var.name_prefix}-log-history-" })
    trail     = merge(local.history, { prefix = "${var.name_prefix}-cloudtrail-" })
    artifacts = { prefix = "${var.name_prefix}-pipeline-", archive_after = null, expire_after = 30 }
  }
  history_buckets = { for name, bucket in local.bucket_definitions : name => bucket if name != "artifacts" || var.enable_pipeline }
}

resource "aws_s3_bucket" "history" {
  #checkov:skip=CKV_AWS_18:These buckets are log archives themselves; server access logs of them would be logs of logs (CloudTrail records their API calls).
  #checkov:skip=CKV2_AWS_62:Archives need no event notifications.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles the archive's cost; the trail is multi-region already and the logs are history, not the ledger.
  for_each      = local.history_buckets
  bucket_prefix = each.value.prefix
  force_destroy = false
}

resource "aws_s3_bucket_public_access_block" "history" {
  for_each                = aws_s3_bucket.history
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "history" {
  for_each = aws_s3_bucket.history
  bucket   = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "history" {
  for_each = aws_s3_bucket.history
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "history" {
  for_each = aws_s3_bucket.history
  bucket   = each.value.id
  rule {
    id     = "archive-then-expire"
    status = "Enabled"
    filter {}
    dynamic "transition" {
      for_each = local.history_buckets[each.key].archive_after == null ? [] : [1]
      content {
        days          = local.history_buckets[each.key].archive_after
        storage_class = "DEEP_ARCHIVE"
      }
    }
    expiration {
      days = local.history_buckets[each.key].expire_after
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# Every bucket of the stack refuses anything but TLS.
data "aws_iam_policy_document" "tls_only" {
  for_each = merge(aws_s3_bucket.history, { alb_logs = aws_s3_bucket.alb_logs })
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "history" {
  for_each = aws_s3_bucket.history
  bucket   = each.value.id
  policy   = each.key == "trail" ? data.aws_iam_policy_document.trail_bucket.json : data.aws_iam_policy_document.tls_only[each.key].json
}
