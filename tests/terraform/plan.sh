#!/usr/bin/env bash
# `terraform validate` and offline plans of terraform/ (tests/terraform/plan.tftest.hcl:
# `terraform test` with a mocked AWS provider, so the provider's real schema
# and validations apply and no account is needed), in both storage modes and
# with the options. They need the AWS provider, which the registry would
# supply over the network: this runs only when a local provider mirror exists
# (TF_PROVIDER_MIRROR, default /opt/tf-plugins) and otherwise says it skipped.
# The copy is pinned to the mirrored provider version (pinned_stack.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/terraform/pinned_stack.sh
source tests/terraform/pinned_stack.sh

pinned_stack_require "terraform plan checks"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pinned_stack_copy "$work"
mkdir "$work/tests"
cp tests/terraform/plan.tftest.hcl "$work/tests/"
echo "terraform plan checks against hashicorp/aws $provider_version from $mirror (the stack declares ~> 6.0)"
terraform -chdir="$work" init -backend=false -input=false -no-color >/dev/null
terraform -chdir="$work" validate -no-color
terraform -chdir="$work" test -no-color
