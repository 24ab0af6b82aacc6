#!/usr/bin/env bash
# `terraform validate` and offline plans of terraform/ (tests/terraform/plan.tftest.hcl:
# `terraform test` with a mocked AWS provider, so the provider's real schema
# and validations apply and no account is needed), in both storage modes and
# with the options. They need the AWS provider, which the registry would
# supply over the network: this runs only when a local provider mirror exists
# (TF_PROVIDER_MIRROR, default /opt/tf-plugins) and otherwise says it skipped.
#
# The mirror may hold another major version than the ~> 6.0 the stack asks
# for: the check runs on a copy pinned to the mirrored version and says which.
set -euo pipefail
cd "$(dirname "$0")/../.."

mirror=${TF_PROVIDER_MIRROR:-/opt/tf-plugins}
provider_dir="$mirror/registry.terraform.io/hashicorp/aws"
if ! command -v terraform >/dev/null 2>&1 || [[ ! -d $provider_dir ]]; then
  echo "terraform plan checks skipped: no terraform CLI or no AWS provider mirror at $mirror"
  exit 0
fi
version=$(find "$provider_dir" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp terraform/*.tf "$work/"
mkdir "$work/tests"
cp tests/terraform/plan.tftest.hcl "$work/tests/"
sed -i "s|version = \"~> 6.0\"|version = \"$version\"|" "$work/versions.tf"
grep -q "version = \"$version\"" "$work/versions.tf" || {
  echo "cannot pin the provider version in the copy of versions.tf" >&2
  exit 1
}
cat >"$work/cli.tfrc" <<CONFIG
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["registry.terraform.io/hashicorp/*"]
  }
  direct {
    exclude = ["registry.terraform.io/hashicorp/*"]
  }
}
CONFIG
export TF_CLI_CONFIG_FILE="$work/cli.tfrc" TF_IN_AUTOMATION=1
echo "terraform plan checks against hashicorp/aws $version from $mirror (the stack declares ~> 6.0)"
terraform -chdir="$work" init -backend=false -input=false -no-color >/dev/null
terraform -chdir="$work" validate -no-color
terraform -chdir="$work" test -no-color
