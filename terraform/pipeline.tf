# Optional (enable_pipeline): CodePipeline takes each commit of
# repository_branch through a CodeStar connection (a zip of the commit, never a
# clone in the build), CodeBuild runs buildspec.yml (fetch and verify the RDS CA
# bundle, build the image, tag it with the commit, push it to ECR, write
# imagedefinitions.json), and the ECS deploy action rolls the service onto it
# (the service's own deployment settings and circuit breaker apply). The
# GitHub Actions workflows and build_and_push.sh stay as the other paths.

locals {
  pipeline       = var.enable_pipeline
  build_log_name = "/codebuild/${var.name_prefix}-image"
  # The containers that run the service's image, for imagedefinitions.json.
  image_containers = {
    postgres = "migrate saldos"
    journal  = "saldos"
  }
  build_images = {
    X86_64 = { image = "aws/codebuild/standard:7.0", type = "LINUX_CONTAINER" }
    ARM64  = { image = "aws/codebuild/amazonlinux2-aarch64-standard:3.0", type = "ARM_CONTAINER" }
  }
}

resource "aws_cloudwatch_log_group" "build" {
  count             = local.pipeline ? 1 : 0
  name              = local.build_log_name
  kms_key_id        = aws_kms_key.main.arn
  retention_in_days = var.log_retention_days
}

# Who may assume the pipeline's roles: the service, on behalf of this account.
data "aws_iam_policy_document" "pipeline_assume" {
  for_each = toset(["codebuild", "codepipeline"])
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["${each.key}.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "codebuild" {
  count              = local.pipeline ? 1 : 0
  name_prefix        = "${var.name_prefix}-build-"
  assume_role_policy = data.aws_iam_policy_document.pipeline_assume["codebuild"].json
}

data "aws_iam_policy_document" "codebuild" {
  count = local.pipeline ? 1 : 0
  statement {
    sid       = "WriteBuildLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.build[0].arn}:*"]
  }
  statement {
    sid       = "ReadSourceWriteArtifacts"
    actions   = ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"]
    resources = ["${aws_s3_bucket.history["artifacts"].arn}/*"]
  }
  statement {
    sid       = "PushTheImage"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage", "ecr:DescribeImages"]
    resources = [aws_ecr_repository.saldos.arn]
  }
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions.
  }
  statement {
    sid       = "UseTheKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "codebuild" {
  count  = local.pipeline ? 1 : 0
  name   = "build-and-push"
  role   = aws_iam_role.codebuild[0].id
  policy = data.aws_iam_policy_document.codebuild[0].json
}

resource "aws_codebuild_project" "image" {
  #checkov:skip=CKV_AWS_316:Privileged mode is what lets CodeBuild run the Docker daemon that builds the image; the build runs only this repository's buildspec.yml.
  count          = local.pipeline ? 1 : 0
  name           = "${var.name_prefix}-image"
  description    = "Builds the saldos image from the pipeline's checkout and pushes it to ECR"
  service_role   = aws_iam_role.codebuild[0].arn
  encryption_key = aws_kms_key.main.arn
  build_timeout  = 60

  artifacts {
    type = "CODEPIPELINE"
  }

  source {
    type      = "CODEPIPELINE"
    buildspec = "buildspec.yml"
  }

  environment {
    compute_type    = "BUILD_GENERAL1_LARGE"
    image           = local.build_images[var.cpu_architecture].image
    type            = local.build_images[var.cpu_architecture].type
    privileged_mode = true

    environment_variable {
      name  = "REPOSITORY_URL"
      value = aws_ecr_repository.saldos.repository_url
    }
    environment_variable {
      name  = "IMAGE_CONTAINERS"
      value = local.image_containers[var.storage]
    }
    # Postgres mode: the pinned checksum of the RDS CA bundle the image needs.
    dynamic "environment_variable" {
      for_each = var.rds_ca_bundle_sha256 == "" ? [] : [var.rds_ca_bundle_sha256]
      content {
        name  = "RDS_CA_BUNDLE_SHA256"
        value = environment_variable.value
      }
    }
  }

  logs_config {
    cloudwatch_logs {
      group_name = aws_cloudwatch_log_group.build[0].name
    }
  }
}

resource "aws_iam_role" "codepipeline" {
  count              = local.pipeline ? 1 : 0
  name_prefix        = "${var.name_prefix}-pipeline-"
  assume_role_policy = data.aws_iam_policy_document.pipeline_assume["codepipeline"].json
}

data "aws_iam_policy_document" "codepipeline" {
  count = local.pipeline ? 1 : 0
  statement {
    sid       = "UseTheConnection"
    actions   = ["codestar-connections:UseConnection", "codeconnections:UseConnection"]
    resources = [var.codestar_connection_arn]
  }
  statement {
    sid       = "Artifacts"
    actions   = ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:GetBucketVersioning"]
    resources = [aws_s3_bucket.history["artifacts"].arn, "${aws_s3_bucket.history["artifacts"].arn}/*"]
  }
  statement {
    sid       = "UseTheKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt"]
    resources = [aws_kms_key.main.arn]
  }
  statement {
    sid       = "RunTheBuild"
    actions   = ["codebuild:StartBuild", "codebuild:BatchGetBuilds"]
    resources = [aws_codebuild_project.image[0].arn]
  }
  # The ECS deploy action (CodePipeline user guide, ECS action reference,
  # service role permissions): it reads the service's revision, registers a
  # copy with the new image, points the service at it and watches the
  # deployment's tasks until they run, on this service and cluster only.
  statement {
    sid       = "DeployTheService"
    actions   = ["ecs:DescribeServices", "ecs:UpdateService"]
    resources = [aws_ecs_service.app.id]
  }
  statement {
    sid       = "RegisterTaskDefinitions"
    actions   = ["ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition"]
    resources = ["*"] # These ECS actions have no resource-level permissions.
  }
  statement {
    # The revision's tags are set as it is registered, never on anything else.
    sid       = "TagTheRevisionItRegisters"
    actions   = ["ecs:TagResource"]
    resources = ["arn:${data.aws_partition.current.partition}:ecs:${var.region}:${data.aws_caller_identity.current.account_id}:task-definition/${aws_ecs_task_definition.app.family}:*"]
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RegisterTaskDefinition"]
    }
  }
  statement {
    sid       = "WatchTheDeploymentsTasks"
    actions   = ["ecs:DescribeTasks"]
    resources = ["arn:${data.aws_partition.current.partition}:ecs:${var.region}:${data.aws_caller_identity.current.account_id}:task/${aws_ecs_cluster.main.name}/*"]
  }
  statement {
    sid       = "ListTheClustersTasks"
    actions   = ["ecs:ListTasks"]
    resources = ["*"] # ListTasks is authorised on container instances; the condition keeps it to this cluster.
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.main.arn]
    }
  }
  statement {
    sid       = "HandTheTaskItsRoles"
    actions   = ["iam:PassRole"]
    resources = [local.execution_role, local.task_role]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "codepipeline" {
  count  = local.pipeline ? 1 : 0
  name   = "source-build-deploy"
  role   = aws_iam_role.codepipeline[0].id
  policy = data.aws_iam_policy_document.codepipeline[0].json
}

resource "aws_codepipeline" "main" {
  count         = local.pipeline ? 1 : 0
  name          = var.name_prefix
  role_arn      = aws_iam_role.codepipeline[0].arn
  pipeline_type = "V2"

  artifact_store {
    location = aws_s3_bucket.history["artifacts"].id
    type     = "S3"
    encryption_key {
      id   = aws_kms_key.main.arn
      type = "KMS"
    }
  }

  stage {
    name = "Source"
    action {
      name             = "Commit"
      category         = "Source"
      owner            = "AWS"
      provider         = "CodeStarSourceConnection"
      version          = "1"
      output_artifacts = ["source"]
      configuration = {
        ConnectionArn        = var.codestar_connection_arn
        FullRepositoryId     = var.repository_id
        BranchName           = var.repository_branch
        OutputArtifactFormat = "CODE_ZIP"
        DetectChanges        = "true"
      }
    }
  }

  stage {
    name = "Build"
    action {
      name             = "Image"
      category         = "Build"
      owner            = "AWS"
      provider         = "CodeBuild"
      version          = "1"
      input_artifacts  = ["source"]
      output_artifacts = ["image"]
      configuration = {
        ProjectName = aws_codebuild_project.image[0].name
      }
    }
  }

  stage {
    name = "Deploy"
    action {
      name            = "Service"
      category        = "Deploy"
      owner           = "AWS"
      provider        = "ECS"
      version         = "1"
      input_artifacts = ["image"]
      configuration = {
        ClusterName       = aws_ecs_cluster.main.name
        ServiceName       = aws_ecs_service.app.name
        FileName          = "imagedefinitions.json"
        DeploymentTimeout = "30"
      }
    }
  }
}
