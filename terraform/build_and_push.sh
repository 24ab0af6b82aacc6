#!/usr/bin/env bash
# Builds the saldos image from this checkout, tags it with the commit SHA,
# pushes it to the stack's ECR repository and prints the image URI.
#
# usage: [RDS_CA_BUNDLE_SHA256=<sha256>] terraform/build_and_push.sh [REGION]
#   RDS_CA_BUNDLE_SHA256: required for postgres mode (the default): the pinned
#   checksum of the RDS CA bundle build_image.sh puts into the image.
# needs: docker (or podman as docker), aws CLI v2 with credentials, git, curl,
#        terraform with this stack applied (for the repository URL).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$here/.." && pwd)

fail() { echo "build_and_push: $*" >&2; exit 1; }

for tool in docker aws git terraform; do
  command -v "$tool" >/dev/null 2>&1 || fail "'$tool' is not installed or not on PATH"
done
aws sts get-caller-identity >/dev/null 2>&1 \
  || fail "no usable AWS credentials (run 'aws configure' or export AWS_PROFILE / AWS_ACCESS_KEY_ID)"

region=${1:-${AWS_REGION:-$(aws configure get region || true)}}
[[ -n "$region" ]] || fail "no region: pass it as the first argument or set AWS_REGION"

repository_url=$(terraform -chdir="$here" output -raw ecr_repository_url 2>/dev/null) \
  || fail "no ecr_repository_url output: run 'terraform apply' in $here first"
registry=${repository_url%%/*}

git -C "$repo_root" diff --quiet HEAD -- \
  || fail "the checkout has uncommitted changes; commit them so the tag names what is built"
tag=$(git -C "$repo_root" rev-parse --short=12 HEAD)
image="${repository_url}:${tag}"

aws ecr get-login-password --region "$region" \
  | docker login --username AWS --password-stdin "$registry" >/dev/null
"$here/build_image.sh" "$image"
docker push "$image"
echo "$image"
# The first apply creates the service with this image; after that the service
# runs the revision last deployed (README, "Who owns what"): register one with
# this image, then point the service at it.
echo "first deploy: terraform -chdir=$here apply -var image_tag=$tag" >&2
echo "later ones:   terraform -chdir=$here apply -var image_tag=$tag && aws ecs update-service" \
  "--cluster \"\$(terraform -chdir=$here output -raw cluster_name)\"" \
  "--service \"\$(terraform -chdir=$here output -raw service_name)\"" \
  "--task-definition \"\$(terraform -chdir=$here output -raw task_definition_arn)\"" >&2
