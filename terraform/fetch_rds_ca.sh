#!/usr/bin/env bash
# Fetches the Amazon RDS CA bundle (every region's roots) into the build
# context as rds-ca-bundle.pem, refusing it unless its SHA-256 is the pinned
# one, so the image's PGSSLROOTCERT (verify-full) is exactly what was reviewed.
# The Dockerfile copies it to /usr/local/share/saldos/rds-ca-bundle.pem.
#
# usage: terraform/fetch_rds_ca.sh SHA256
#   SHA256: the bundle's checksum, taken once from a reviewed download:
#   curl -fsSL https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem | sha256sum
# needs: curl, sha256sum. Used by buildspec.yml and build_and_push.sh.
set -euo pipefail

RDS_CA_BUNDLE_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem

fail() { echo "fetch_rds_ca: $*" >&2; exit 1; }

expected=${1:-}
[[ $expected =~ ^[0-9a-f]{64}$ ]] || fail "give the bundle's pinned SHA-256 (64 lowercase hex digits)"
repo_root=$(cd "$(dirname "$0")/.." && pwd)
destination="$repo_root/rds-ca-bundle.pem"

download=$(mktemp)
trap 'rm -f "$download"' EXIT
curl --proto '=https' --tlsv1.2 --fail --silent --show-error --location \
  --max-time 60 --output "$download" "$RDS_CA_BUNDLE_URL"
actual=$(sha256sum "$download" | cut -d ' ' -f 1)
[[ $actual == "$expected" ]] ||
  fail "the bundle at $RDS_CA_BUNDLE_URL has SHA-256 $actual, not the pinned $expected: review it, then update rds_ca_bundle_sha256"
grep -q -- '-----BEGIN CERTIFICATE-----' "$download" || fail "the download holds no certificate"
install -m 0644 "$download" "$destination"
echo "fetch_rds_ca: $destination verified ($actual)"
