# The certificate authorities of RDS, for the functions to verify the database's certificate
# (sslmode=verify-full): fetched from AWS's trust store when Terraform plans, and shipped as a
# Lambda layer, which Lambda unpacks under /opt. Fetched here rather than committed or built into
# the zips: AWS replaces its CAs on its own schedule, and every apply then brings the current ones.

data "http" "bundle" {
  url = "https://truststore.pki.rds.amazonaws.com/${var.region}/${var.region}-bundle.pem"

  lifecycle {
    postcondition {
      condition     = self.status_code == 200 && strcontains(self.response_body, "-----BEGIN CERTIFICATE-----")
      error_message = "The RDS CA bundle for ${var.region} could not be fetched from AWS's trust store."
    }
  }
}

data "archive_file" "layer" {
  type        = "zip"
  output_path = "${path.root}/.terraform/rds-ca-${var.region}.zip"

  source {
    content  = data.http.bundle.response_body
    filename = local.bundle_path_in_layer
  }
}

locals {
  bundle_path_in_layer = "rds-ca/${var.region}-bundle.pem"
}

resource "aws_lambda_layer_version" "this" {
  layer_name          = "${var.name_prefix}-rds-ca"
  description         = "RDS certificate authorities of ${var.region} (${local.bundle_path_in_layer})"
  filename            = data.archive_file.layer.output_path
  source_code_hash    = data.archive_file.layer.output_base64sha256
  compatible_runtimes = ["python3.12"]
}
