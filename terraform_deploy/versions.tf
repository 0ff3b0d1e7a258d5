# Pinned so that a plan made today is the plan made next month: the AWS provider's major versions
# rename and remove arguments (v4 moved bucket settings into their own resources, v6 added
# per-resource regions), and the configuration is written and checked against v6.
terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    # the RDS CA bundle, fetched and zipped into a layer at plan time (modules/rds_ca)
    http = {
      source  = "hashicorp/http"
      version = "~> 3.4"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.7"
    }
  }
}

provider "aws" {
  region = var.region

  # Every resource carries the same tags, so the bill and the console can be filtered by deployment.
  default_tags {
    tags = merge(var.tags, {
      Project     = "fma"
      Deployment  = var.name_prefix
      ManagedBy   = "terraform"
      Environment = var.environment
    })
  }
}
