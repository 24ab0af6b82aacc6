#!/usr/bin/env bash
# Builds the saldos image from this checkout (never a clone) as IMAGE. Used by
# build_and_push.sh, buildspec.yml (CodeBuild) and the deploy workflow.
#
# With RDS_CA_BUNDLE_SHA256 set (postgres mode), the Amazon RDS CA bundle is
# fetched into the build context as rds-ca-bundle.pem and refused unless its
# SHA-256 is that pinned one, so the image's PGSSLROOTCERT (verify-full) is
# exactly what was reviewed; the build then fails without it. Take the
# checksum once, after reviewing the download:
#   curl -fsSL https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem | sha256sum
# Without it the image has no RDS CA bundle: journal mode only.
#
# The Dockerfile's builder base is Docker Hub's official `rust` image, by its
# short name (CI's offline image check builds exactly that name). Docker Hub
# rate-limits anonymous pulls, which is what CodeBuild's are: this build takes
# the same image from its ECR Public mirror (public.ecr.aws/docker/library)
# through a named build context, so nothing here pulls from Docker Hub (the
# runtime base comes from gcr.io).
#
# usage: [RDS_CA_BUNDLE_SHA256=<sha256>] terraform/build_image.sh IMAGE
# needs: docker with BuildKit (or podman as docker), curl, sha256sum.
set -euo pipefail

RDS_CA_BUNDLE_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
DOCKER_HUB_MIRROR=public.ecr.aws/docker/library

fail() { echo "build_image: $*" >&2; exit 1; }

image=${1:-}
[[ -n $image ]] || fail "usage: [RDS_CA_BUNDLE_SHA256=<sha256>] $0 IMAGE"
repo_root=$(cd "$(dirname "$0")/.." && pwd)
bundle="$repo_root/rds-ca-bundle.pem"

fetch_rds_ca_bundle() { # expected-sha256
  local expected=$1 download actual
  [[ $expected =~ ^[0-9a-f]{64}$ ]] || fail "RDS_CA_BUNDLE_SHA256 must be 64 lowercase hex digits"
  download=$(mktemp)
  curl --proto '=https' --tlsv1.2 --fail --silent --show-error --location \
    --max-time 60 --output "$download" "$RDS_CA_BUNDLE_URL"
  actual=$(sha256sum "$download" | cut -d ' ' -f 1)
  if [[ $actual != "$expected" ]]; then
    rm -f "$download"
    fail "the bundle at $RDS_CA_BUNDLE_URL has SHA-256 $actual, not the pinned $expected: review it, then update rds_ca_bundle_sha256"
  fi
  grep -q -- '-----BEGIN CERTIFICATE-----' "$download" || fail "the download holds no certificate"
  install -m 0644 "$download" "$bundle"
  rm -f "$download"
  echo "build_image: RDS CA bundle verified ($actual)"
}

required=false
rm -f "$bundle" # never an old bundle left from another build
if [[ -n ${RDS_CA_BUNDLE_SHA256:-} ]]; then
  fetch_rds_ca_bundle "$RDS_CA_BUNDLE_SHA256"
  required=true
else
  echo "build_image: no RDS_CA_BUNDLE_SHA256: the image has no RDS CA bundle (journal mode only)" >&2
fi
# The builder base as the Dockerfile names it (rust:<RUST_VERSION>-slim-trixie),
# taken from the mirror instead.
rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' "$repo_root/Dockerfile")
builder_base=$(awk '$1 == "FROM" && $NF == "chef" {print $2}' "$repo_root/Dockerfile")
builder_base=${builder_base//'${RUST_VERSION}'/$rust_version}
[[ -n $rust_version && $builder_base == rust:* ]] || fail "cannot read the builder base from the Dockerfile ('$builder_base')"
docker build --pull --build-arg RDS_CA_BUNDLE_REQUIRED="$required" \
  --build-context "$builder_base=docker-image://$DOCKER_HUB_MIRROR/$builder_base" \
  --tag "$image" "$repo_root"
