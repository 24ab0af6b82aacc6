# Sourced by plan.sh and apply.sh: a copy of terraform/ that runs on the AWS
# provider of a local filesystem mirror, never the registry (which would need
# the network). The mirror is TF_PROVIDER_MIRROR, default /opt/tf-plugins.
#
# The mirror may hold another major version than the ~> 6.0 the stack asks
# for: the copy is pinned to the mirrored version, and the callers say which.

# Exits 0 with "<what> skipped" when there is no terraform CLI or no mirror;
# otherwise sets `mirror` and `provider_version`.
pinned_stack_require() { # what
  mirror=${TF_PROVIDER_MIRROR:-/opt/tf-plugins}
  local provider_dir="$mirror/registry.terraform.io/hashicorp/aws"
  if ! command -v terraform >/dev/null 2>&1 || [[ ! -d $provider_dir ]]; then
    echo "$1 skipped: no terraform CLI or no AWS provider mirror at $mirror"
    exit 0
  fi
  provider_version=$(find "$provider_dir" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
}

# Copies terraform/*.tf into DIR with the provider pinned to the mirrored
# version, and gives DIR the mirror's CLI configuration (below). Run from the
# repository's root.
pinned_stack_copy() { # dir
  local dir=$1
  cp terraform/*.tf "$dir/"
  sed -i "s|version = \"~> 6.0\"|version = \"$provider_version\"|" "$dir/versions.tf"
  grep -q "version = \"$provider_version\"" "$dir/versions.tf" || {
    echo "cannot pin the provider version in the copy of versions.tf" >&2
    exit 1
  }
  pinned_stack_cli_config "$dir"
}

# Writes DIR/cli.tfrc (the mirror only, for hashicorp/*) and exports
# TF_CLI_CONFIG_FILE, TF_IN_AUTOMATION and CHECKPOINT_DISABLE (no version
# check over the network).
pinned_stack_cli_config() { # dir
  cat >"$1/cli.tfrc" <<CONFIG
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
  export TF_CLI_CONFIG_FILE="$1/cli.tfrc" TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1
}
