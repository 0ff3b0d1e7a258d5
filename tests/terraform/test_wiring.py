"""Names and module interfaces of terraform_deploy/, checked offline (what `terraform validate`
would reject): every reference resolves, every module call matches the module's variables, and
every variable is typed, described and, where a value can be wrong, validated."""

from pathlib import Path

import hcl2
import pytest

from .hcl_config import (
    TERRAFORM_DIR,
    attributes,
    documentation_errors,
    load_tree,
    parse_text,
    unquote,
    wiring_errors,
)

TREE = load_tree()
ROOT = TREE[TERRAFORM_DIR]

# Root variables that legitimately take any value of their type.
UNVALIDATED_ROOT_VARIABLES = {
    "tags": "free-form map; AWS rejects bad tags with a clear message",
    "api_handler": "module.function path inside the package; only the package knows it",
    "aggregator_handler": "module.function path inside the package; only the package knows it",
}


def test_every_module_is_found_and_parsed():
    names = {path.name for path in TREE}
    assert {"network", "database", "weights_bucket", "secrets", "api", "aggregator", "monitoring"} <= names
    assert all(module.variables or module.path == TERRAFORM_DIR for module in TREE.values())


@pytest.mark.parametrize("path", sorted(TREE), ids=lambda p: p.name)
def test_references_and_module_calls_resolve(path):
    assert wiring_errors(TREE[path], TREE) == []


@pytest.mark.parametrize("path", sorted(TREE), ids=lambda p: p.name)
def test_every_variable_is_typed_and_described_and_every_output_described(path):
    assert documentation_errors(TREE[path]) == []


def test_root_variables_are_validated_where_a_value_can_be_wrong():
    for name, body in ROOT.variables.items():
        if body["type"] == "bool" or name in UNVALIDATED_ROOT_VARIABLES:
            continue
        assert body.get("validation"), f"variable {name} has no validation block"


def test_root_declares_the_outputs_operators_need():
    assert {
        "api_url",
        "api_function_name",
        "aggregator_function_name",
        "weights_bucket_name",
        "database_endpoint",
        "database_secret_arn",
        "secret_key_secret_arn",
    } <= set(ROOT.outputs)


def test_tfvars_example_sets_only_declared_variables():
    example = attributes(hcl2.loads((TERRAFORM_DIR / "terraform.tfvars.example").read_text()))
    assert example
    assert set(example) - set(ROOT.variables) == set()


def test_versions_pin_terraform_and_providers():
    versions = hcl2.loads((TERRAFORM_DIR / "versions.tf").read_text())
    terraform = versions["terraform"][0]
    assert unquote(terraform["required_version"])
    providers = terraform["required_providers"][0]
    for name in ("aws", "random"):
        assert unquote(providers[name]["version"]).startswith("~>"), f"provider {name} is not pinned"


# --- the checker itself must catch broken wiring ------------------------------------------------

BROKEN_ROOT = """
locals {
  known = "x"
}

resource "aws_s3_bucket" "b" {
  bucket = "${var.undeclared}-${local.unknown}"
}

module "child" {
  source   = "./child"
  bogus    = aws_s3_bucket.missing.id
  optional = data.aws_caller_identity.nowhere.account_id
}

output "o" {
  value = module.child.not_an_output
}
"""

BROKEN_CHILD = """
variable "needed" {
  type        = string
  description = "required"
}

variable "optional" {
  type        = string
  description = "optional"
  default     = ""
}

output "real" {
  value = var.needed
}
"""


def test_wiring_checker_reports_each_kind_of_broken_reference(tmp_path: Path):
    (tmp_path / "child").mkdir()
    (tmp_path / "main.tf").write_text(BROKEN_ROOT)
    (tmp_path / "child" / "main.tf").write_text(BROKEN_CHILD)
    tree = load_tree(tmp_path)

    errors = "\n".join(wiring_errors(tree[tmp_path.resolve()], tree))

    assert "var.undeclared is not declared" in errors
    assert "local.unknown is not defined" in errors
    assert "resource aws_s3_bucket.missing does not exist" in errors
    assert "data.aws_caller_identity.nowhere does not exist" in errors
    assert "module.child.not_an_output is not an output" in errors
    assert "module child passes bogus" in errors
    assert "module child misses required variable needed" in errors
    assert wiring_errors(tree[(tmp_path / "child").resolve()], tree) == []


def test_documentation_checker_reports_untyped_and_undescribed_names():
    module = parse_text('variable "loose" {}\n\noutput "bare" {\n  value = 1\n}\n')
    errors = "\n".join(documentation_errors(module))
    assert "variable loose has no type" in errors
    assert "variable loose has no description" in errors
    assert "output bare has no description" in errors
