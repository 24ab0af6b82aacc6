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
  description = "CIDR block of the dedicated VPC (a /16 is split into public and private /20s)."
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
  description = "Existing ECS task role ARN (needs EFS ClientMount/ClientWrite); empty creates one."
  default     = ""

  validation {
    condition     = var.task_role_arn == "" || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.task_role_arn))
    error_message = "task_role_arn must be empty or an IAM role ARN."
  }
}

variable "log_retention_days" {
  type        = number
  description = "Retention of the service's and the WAF's CloudWatch logs, in days."
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
  description = "Seconds ECS ignores failing health checks after a task starts (journal recovery time)."
  default     = 60

  validation {
    condition     = var.health_check_grace_s >= 0 && var.health_check_grace_s <= 2147483647
    error_message = "health_check_grace_s must be a non-negative number of seconds."
  }
}
