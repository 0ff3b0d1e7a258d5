variable "name_prefix" {
  type        = string
  description = "Prefix of the layer's name (<prefix>-rds-ca)."
}

variable "region" {
  type        = string
  description = "Region of the database, whose CA bundle is fetched."
}
