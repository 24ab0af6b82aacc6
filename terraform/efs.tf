# Journal mode only: EFS holds the journal: encrypted, one mount target per
# private subnet, an access point owned by uid/gid 65532 rooted at its own
# directory, TLS and IAM required for every mount.

resource "aws_efs_file_system" "journal" {
  count            = local.journal ? 1 : 0
  creation_token   = "${var.name_prefix}-journal"
  encrypted        = true
  kms_key_id       = aws_kms_key.main.arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"

  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }

  tags = { Name = "${var.name_prefix}-journal" }
}

resource "aws_efs_backup_policy" "journal" {
  count          = local.journal && !var.emulator_unsupported_off ? 1 : 0
  file_system_id = aws_efs_file_system.journal[0].id
  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_efs_mount_target" "journal" {
  count           = local.journal ? 3 : 0
  file_system_id  = aws_efs_file_system.journal[0].id
  subnet_id       = aws_subnet.private[count.index].id
  security_groups = [aws_security_group.efs[0].id]
}

resource "aws_efs_access_point" "journal" {
  count          = local.journal ? 1 : 0
  file_system_id = aws_efs_file_system.journal[0].id

  posix_user {
    uid = 65532
    gid = 65532
  }

  root_directory {
    path = "/saldos"
    creation_info {
      owner_uid   = 65532
      owner_gid   = 65532
      permissions = "0700"
    }
  }
}

data "aws_iam_policy_document" "efs" {
  count = local.journal ? 1 : 0
  statement {
    sid     = "TasksThroughTheAccessPointOnly"
    actions = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    principals {
      type        = "AWS"
      identifiers = [local.task_role]
    }
    resources = [aws_efs_file_system.journal[0].arn]
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.journal[0].arn]
    }
  }
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    resources = [aws_efs_file_system.journal[0].arn]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_efs_file_system_policy" "journal" {
  count          = local.journal && !var.emulator_unsupported_off ? 1 : 0
  file_system_id = aws_efs_file_system.journal[0].id
  policy         = data.aws_iam_policy_document.efs[0].json
}
