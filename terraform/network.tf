# A dedicated VPC across three AZs: public subnets hold only the ALB; tasks and
# EFS live in private subnets with no route to the internet, the database in
# its own subnets with no route at all. Every AWS API the tasks call is reached
# through a VPC endpoint, so there is no NAT gateway (see local.endpoints).

resource "aws_vpc" "main" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = "${var.name_prefix}-vpc" }
}

# The default security group of the VPC denies everything.
resource "aws_default_security_group" "default" {
  vpc_id = aws_vpc.main.id
}

resource "aws_flow_log" "vpc" {
  count                = local.create_roles ? 1 : 0
  vpc_id               = aws_vpc.main.id
  traffic_type         = "REJECT"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow.arn
  iam_role_arn         = aws_iam_role.flow_logs[0].arn
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id
}

resource "aws_subnet" "public" {
  count             = 3
  vpc_id            = aws_vpc.main.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, count.index)

  tags = { Name = "${var.name_prefix}-public-${local.azs[count.index]}", Tier = "public" }
}

resource "aws_subnet" "private" {
  count             = 3
  vpc_id            = aws_vpc.main.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, count.index + 8)

  tags = { Name = "${var.name_prefix}-private-${local.azs[count.index]}", Tier = "private" }
}

# The database subnets: their own route table has no route at all beyond the
# VPC itself, so the database has no way to or from the internet.
resource "aws_subnet" "database" {
  count             = local.postgres ? 3 : 0
  vpc_id            = aws_vpc.main.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, count.index + 12)

  tags = { Name = "${var.name_prefix}-database-${local.azs[count.index]}", Tier = "database" }
}

resource "aws_route_table" "database" {
  count  = local.postgres ? 1 : 0
  vpc_id = aws_vpc.main.id
}

resource "aws_route_table_association" "database" {
  count          = local.postgres ? 3 : 0
  subnet_id      = aws_subnet.database[count.index].id
  route_table_id = aws_route_table.database[0].id
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.main.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.main.id
  }
}

resource "aws_route_table_association" "public" {
  count          = 3
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.main.id
}

resource "aws_route_table_association" "private" {
  count          = 3
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.main.id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
}

locals {
  # What the tasks call, and why: image pulls (ecr.api, ecr.dkr; layers come
  # from S3 through the gateway endpoint), awslogs and the collector's EMF
  # metrics (logs), traces (xray), the master secret for the migrate container
  # (secretsmanager), the JWKS of a Cognito user pool (cognito-idp). RDS IAM
  # tokens are signed locally and the task's credentials come from the ECS
  # agent, so neither STS nor RDS endpoints are needed.
  endpoints = concat(
    ["ecr.api", "ecr.dkr", "logs", "xray"],
    local.postgres ? ["secretsmanager"] : [],
    var.jwks_url != "" ? ["cognito-idp"] : [],
  )
}

resource "aws_vpc_endpoint" "interface" {
  for_each            = toset(local.endpoints)
  vpc_id              = aws_vpc.main.id
  service_name        = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = true
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints.id]
}
