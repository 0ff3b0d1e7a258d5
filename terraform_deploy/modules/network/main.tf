# A VPC with private subnets only. The functions never reach the internet: every AWS service they
# call is reached through a VPC endpoint (S3 through a free gateway endpoint, the others through
# interface endpoints), so there is no NAT gateway to pay for and no route out to defend.

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first az_count regular zones in name order are used (local.azs); AWS gives new zones later letters, so a new zone never changes the selection.
  state = "available"

  # Regular zones only: opted-in Local Zones (us-east-1-bos-1a) sort before us-east-1a and would
  # shift the selection, and most services have no endpoints there.
  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  azs = slice(data.aws_availability_zones.available.names, 0, var.az_count)
  # Computed from the variables (not read back from the subnets) so that for_each keys built from
  # them are known at plan time.
  subnet_cidrs = [for index in range(var.az_count) : cidrsubnet(var.vpc_cidr, 4, index)]
}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true # interface endpoints' private DNS names need both DNS settings on

  tags = { Name = var.name_prefix }
}

# Lock down the VPC's default security group: nothing should use it, and if something does by
# accident it gets no traffic.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_subnet" "private" {
  count = var.az_count

  vpc_id                  = aws_vpc.this.id
  availability_zone       = local.azs[count.index]
  cidr_block              = local.subnet_cidrs[count.index]
  map_public_ip_on_launch = false

  tags = { Name = "${var.name_prefix}-private-${local.azs[count.index]}" }
}

# One route table without a default route: traffic leaves the VPC only through the endpoints.
resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id
  tags   = { Name = "${var.name_prefix}-private" }
}

resource "aws_route_table_association" "private" {
  count = var.az_count

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# --- security groups ---------------------------------------------------------------------------
# One group per function, so the database's group can name exactly who may connect.

resource "aws_security_group" "function" {
  #checkov:skip=CKV2_AWS_5:Attached to the Lambda functions' vpc_config in modules/function, which checkov's graph does not follow across module outputs.
  for_each = toset(["api", "aggregator"])

  name        = "${var.name_prefix}-${each.key}-function"
  description = "FMA ${each.key} Lambda: egress to the endpoints, S3 and PostgreSQL only"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_egress_rule" "function_https_endpoints" {
  for_each = aws_security_group.function

  security_group_id            = each.value.id
  description                  = "HTTPS to the interface VPC endpoints"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.endpoints.id
}

resource "aws_vpc_security_group_egress_rule" "function_https_s3" {
  for_each = aws_security_group.function

  security_group_id = each.value.id
  description       = "HTTPS to S3 through the gateway endpoint"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = aws_vpc_endpoint.s3.prefix_list_id
}

resource "aws_vpc_security_group_egress_rule" "function_postgres" {
  # The database lives in the same private subnets; its own group decides who gets in.
  for_each = { for pair in setproduct(keys(aws_security_group.function), local.subnet_cidrs) : "${pair[0]}-${pair[1]}" => pair }

  security_group_id = aws_security_group.function[each.value[0]].id
  description       = "PostgreSQL to the database in the private subnets"
  ip_protocol       = "tcp"
  from_port         = 5432
  to_port           = 5432
  cidr_ipv4         = each.value[1]
}

resource "aws_security_group" "endpoints" {
  name        = "${var.name_prefix}-vpc-endpoints"
  description = "Interface VPC endpoints: HTTPS from the FMA functions only"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_functions" {
  for_each = aws_security_group.function

  security_group_id            = aws_security_group.endpoints.id
  description                  = "HTTPS from the ${each.key} function"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = each.value.id
}

# --- endpoints ---------------------------------------------------------------------------------

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]

  tags = { Name = "${var.name_prefix}-s3" }
}

resource "aws_vpc_endpoint" "interface" {
  for_each = toset(var.interface_endpoint_services)

  vpc_id              = aws_vpc.this.id
  service_name        = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints.id]
  private_dns_enabled = true # the SDKs' default endpoint names then resolve inside the VPC

  tags = { Name = "${var.name_prefix}-${each.key}" }
}

# --- flow logs ---------------------------------------------------------------------------------
# Rejected connections are what one needs when a function cannot reach something; accepted ones
# cost ingestion for little insight, so only REJECT is recorded.

resource "aws_cloudwatch_log_group" "flow_logs" {
  name              = "/fma/${var.name_prefix}/vpc-flow-logs"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

data "aws_caller_identity" "current" {}

# Only the flow logs of this account may take the role (no confused deputy).
data "aws_iam_policy_document" "flow_logs_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

data "aws_iam_policy_document" "flow_logs_write" {
  statement {
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:DescribeLogStreams",
    ]
    resources = ["${aws_cloudwatch_log_group.flow_logs.arn}:*"]
  }
}

resource "aws_iam_role" "flow_logs" {
  name               = "${var.name_prefix}-vpc-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_trust.json
}

resource "aws_iam_role_policy" "flow_logs" {
  name   = "write-flow-logs"
  role   = aws_iam_role.flow_logs.id
  policy = data.aws_iam_policy_document.flow_logs_write.json
}

resource "aws_flow_log" "this" {
  vpc_id          = aws_vpc.this.id
  traffic_type    = "REJECT"
  log_destination = aws_cloudwatch_log_group.flow_logs.arn
  iam_role_arn    = aws_iam_role.flow_logs.arn
}
