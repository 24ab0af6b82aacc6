#!/usr/bin/env bash
# A real `terraform apply` of terraform/, then `terraform destroy`, in both
# storage modes (journal, then postgres with authentication and the
# pipeline), against moto, a local AWS emulator, in server mode on
# 127.0.0.1. It catches what plans cannot see: the order AWS creates things
# in, what the provider sends and reads back. Between apply and destroy it
# plays a pipeline deploy and a scale-out behind Terraform's back (a new task
# definition revision and more tasks, as CodePipeline and autoscaling do)
# and requires the next plan to change nothing.
#
# It never reaches AWS: every endpoint the provider knows (its schema's full
# list) points at the emulator, credentials are fake, shared config and the
# instance metadata service are off, and any request that still went
# elsewhere would meet a proxy on a closed loopback port. It refuses to start
# if any configured endpoint is not loopback.
#
# The few resources moto cannot create are left out by one variable,
# emulator_unsupported_off, set only here; the list and each reason are in
# terraform/variables.tf (local.emulator_unsupported) and printed below. Any
# other error fails the run.
#
# Needs the AWS provider mirror and terraform like plan.sh (skipped without
# them) and moto[server] in the venv MOTO_VENV (default .ci/venv-moto, which
# .ci/run creates).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/terraform/pinned_stack.sh
source tests/terraform/pinned_stack.sh

pinned_stack_require "terraform apply checks"
MOTO_VENV=${MOTO_VENV:-.ci/venv-moto}
STEP_TIMEOUT_S=600 # one apply, plan or destroy; moto answers in seconds
MOTO_STOP_S=10     # after SIGTERM, then SIGKILL
[[ -x $MOTO_VENV/bin/moto_server ]] || {
  echo "no moto server in $MOTO_VENV: create it as .ci/run does (moto[server] in a venv)" >&2
  exit 1
}
started=$(date +%s)

fail() {
  printf '\nTERRAFORM APPLY CHECK FAILED: %s\n' "$*" >&2
  exit 1
}

work=$(mktemp -d)
moto_pid=""
cleanup() {
  if [[ -n $moto_pid ]] && kill -0 "$moto_pid" 2>/dev/null; then
    kill -TERM "$moto_pid" 2>/dev/null || true
    local _
    for _ in $(seq $((MOTO_STOP_S * 10))); do
      kill -0 "$moto_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$moto_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# --- the emulator, on loopback only ------------------------------------------

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
emulator=http://127.0.0.1:$port
# IAM's AWS-managed policies (the stack attaches AmazonRDSEnhancedMonitoringRole)
# exist in the emulator only when it loads them.
MOTO_IAM_LOAD_MANAGED_POLICIES=true "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" \
  >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 100); do
  curl -fsS -o /dev/null --max-time 1 "$emulator/moto-api/" 2>/dev/null && break
  kill -0 "$moto_pid" 2>/dev/null || { cat "$work/moto.log" >&2; fail "moto server exited at start"; }
  sleep 0.2
done
curl -fsS -o /dev/null --max-time 1 "$emulator/moto-api/" || fail "moto server did not answer on $emulator within 20 s"
echo "moto $("$MOTO_VENV/bin/python" -c 'import moto; print(moto.__version__)') on $emulator (pid $moto_pid)"

# Nothing from this machine's AWS setup: fake credentials, no shared config,
# no instance metadata, every SDK endpoint the emulator, and a dead proxy for
# anything else.
while IFS='=' read -r name _; do unset "$name"; done < <(env | grep -E '^AWS_[A-Z0-9_]*=' || true)
export AWS_ACCESS_KEY_ID=emulator AWS_SECRET_ACCESS_KEY=emulator AWS_REGION=us-east-1 \
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
  AWS_ENDPOINT_URL=$emulator \
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1
export http_proxy=$HTTP_PROXY https_proxy=$HTTPS_PROXY no_proxy=$NO_PROXY

# --- the stack, with every provider endpoint on the emulator -------------------

pinned_stack_copy "$work"
echo "terraform apply checks against hashicorp/aws $provider_version from $mirror (the stack declares ~> 6.0)"
terraform -chdir="$work" init -backend=false -input=false -no-color >/dev/null
terraform -chdir="$work" providers schema -json >"$work/schema.json"

# emulator_override.tf: the provider block's overrides. Every endpoint in the
# provider's schema is set; where several names are aliases of one service
# (the provider warns when more than one is set) only the first is kept, as
# `terraform validate` reports them.
write_override() { # aliases-file
  python3 - "$work/schema.json" "$emulator" "$1" >"$work/emulator_override.tf" <<'PY'
import json, sys
schema, url, aliases_file = sys.argv[1:]
provider = json.load(open(schema))["provider_schemas"]["registry.terraform.io/hashicorp/aws"]["provider"]
names = sorted(provider["block"]["block_types"]["endpoints"]["block"]["attributes"])
dropped = set()
for group in json.load(open(aliases_file)):
    dropped.update(sorted(group)[1:])
print('provider "aws" {')
for key, value in [("access_key", "emulator"), ("secret_key", "emulator"),
                   ("http_proxy", "http://127.0.0.1:9"), ("https_proxy", "http://127.0.0.1:9"),
                   ("no_proxy", "127.0.0.1")]:
    print(f'  {key} = "{value}"')
for key in ("skip_credentials_validation", "skip_metadata_api_check", "skip_region_validation", "s3_use_path_style"):
    print(f"  {key} = true")
print("  max_retries = 2")
print("  endpoints {")
for name in names:
    if name not in dropped:
        print(f'    {name} = "{url}"')
print("  }")
print("}")
PY
}
echo '[]' >"$work/aliases.json"
write_override "$work/aliases.json"
terraform -chdir="$work" validate -json -no-color >"$work/validate.json" || true
python3 - "$work/validate.json" >"$work/aliases.json" <<'PY'
import json, re, sys
groups = []
for d in json.load(open(sys.argv[1])).get("diagnostics", []):
    if d.get("summary") == "Invalid Attribute Combination":
        groups.append(re.findall(r'"endpoints\[0\]\.([a-z0-9]+)"', d.get("detail", "")))
print(json.dumps(groups))
PY
write_override "$work/aliases.json"

# Refuse to run unless every URL the provider is given is the emulator's or
# the dead loopback proxy, and the SDK's own endpoint variables agree.
endpoint_count=0
while read -r url; do
  [[ $url == "$emulator" || $url == http://127.0.0.1:9 ]] ||
    fail "emulator_override.tf sets '$url', which is not this loopback emulator: refusing to run"
  [[ $url != "$emulator" ]] || endpoint_count=$((endpoint_count + 1))
done < <(grep -oE '"[a-z]+://[^"]*"' "$work/emulator_override.tf" | tr -d '"')
while IFS='=' read -r name value; do
  [[ $value == "$emulator" ]] || fail "$name=$value is not this loopback emulator: refusing to run"
done < <(env | grep -E '^AWS_ENDPOINT_URL' || true)
((endpoint_count > 100)) || fail "only $endpoint_count endpoints point at the emulator: refusing to run"
terraform -chdir="$work" validate -no-color >/dev/null
echo "all $endpoint_count provider endpoints (one name per service) and AWS_ENDPOINT_URL point at $emulator; proxy for anything else: 127.0.0.1:9 (closed)"

echo
echo "left out for the emulator (emulator_unsupported_off = true; terraform/variables.tf):"
echo 'jsonencode(local.emulator_unsupported)' |
  terraform -chdir="$work" console -var image_tag=emulator -var allow_unauthenticated=true 2>/dev/null |
  python3 -c 'import json, sys; [print(f"  - {k}: {v}") for k, v in sorted(json.loads(json.loads(sys.stdin.read())).items())]'

# --- apply, a deploy behind Terraform's back, a plan, destroy ------------------

tf_step() { # what log terraform-args...
  local what=$1 log=$2 t0 code=0
  shift 2
  t0=$(date +%s)
  timeout --kill-after=30 "$STEP_TIMEOUT_S" terraform -chdir="$work" "$@" -input=false -no-color \
    -compact-warnings >"$log" 2>&1 || code=$?
  if ((code != 0 && code != 2)) || { ((code == 2)) && [[ $1 != plan ]]; }; then
    tail -n 40 "$log" >&2
    grep -E 'NotImplementedError|Error' "$work/moto.log" | sort | uniq -c | tail -n 10 >&2 || true
    ((code != 124)) || fail "$what did not finish within ${STEP_TIMEOUT_S} s (last lines above)"
    fail "$what failed with exit code $code (last lines above; the emulator's errors after them)"
  fi
  echo "$what: $(($(date +%s) - t0)) s" >&2
  return "$code"
}

# As CodePipeline's ECS deploy action does: a copy of the service's revision
# with another image, the service pointed at it; as autoscaling does: one
# task more. Then the ALB's deletion protection off and the ECR repository
# emptied, as terraform/README.md says a destroy needs.
emulator_aws() { # deploy|before-destroy
  "$MOTO_VENV/bin/python" - "$1" "$emulator" <<'PY'
import sys
import boto3
action, url = sys.argv[1:]
session = boto3.session.Session(region_name="us-east-1")
ecs = session.client("ecs", endpoint_url=url)
elbv2 = session.client("elbv2", endpoint_url=url)
cluster = ecs.list_clusters()["clusterArns"][0]
service = ecs.describe_services(cluster=cluster, services=ecs.list_services(cluster=cluster)["serviceArns"])["services"][0]
if action == "deploy":
    current = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    keep = ("family", "taskRoleArn", "executionRoleArn", "networkMode", "containerDefinitions", "volumes",
            "requiresCompatibilities", "cpu", "memory", "runtimePlatform")
    revision = {k: current[k] for k in keep if k in current}
    for container in revision["containerDefinitions"]:
        if container["image"].endswith(":emulator"):
            container["image"] = container["image"][: -len("emulator")] + "deployed"
    new = ecs.register_task_definition(**revision)["taskDefinition"]["taskDefinitionArn"]
    ecs.update_service(cluster=cluster, service=service["serviceName"], taskDefinition=new,
                       desiredCount=service["desiredCount"] + 1)
    print(f"  pipeline deploy: {service['serviceName']} now runs {new.split('/')[-1]}, "
          f"{service['desiredCount'] + 1} tasks (was {service['taskDefinition'].split('/')[-1]}, {service['desiredCount']})")
else:
    for lb in elbv2.describe_load_balancers()["LoadBalancers"]:
        elbv2.modify_load_balancer_attributes(
            LoadBalancerArn=lb["LoadBalancerArn"],
            Attributes=[{"Key": "deletion_protection.enabled", "Value": "false"}])
    print("  ALB deletion protection off")
PY
}

check_mode() { # mode terraform-var-args...
  local mode=$1 count plan_code=0
  shift
  local vars=(-var image_tag=emulator -var "storage=$mode" -var emulator_unsupported_off=true
    -var db_deletion_protection=false -var db_skip_final_snapshot=true "$@")
  printf '\n--- %s mode\n' "$mode"
  curl -fsS -o /dev/null -X POST "$emulator/moto-api/reset" || fail "cannot reset the emulator"
  tf_step "apply ($mode)" "$work/apply-$mode.log" apply -auto-approve "${vars[@]}"
  count=$(terraform -chdir="$work" state list | grep -cv '^data\.')
  echo "  created $count resources"
  emulator_aws deploy
  tf_step "plan after the deploy ($mode)" "$work/plan-$mode.log" plan -detailed-exitcode "${vars[@]}" || plan_code=$?
  if ((plan_code != 0)); then
    grep -E '^  # |Plan:' "$work/plan-$mode.log" >&2 || true
    fail "$mode: after a pipeline deploy and a scale-out, terraform plan wants changes (above): Terraform would fight the pipeline or autoscaling"
  fi
  echo "  plan after the deploy: no changes"
  emulator_aws before-destroy
  tf_step "destroy ($mode)" "$work/destroy-$mode.log" destroy -auto-approve "${vars[@]}"
  [[ -z $(terraform -chdir="$work" state list) ]] || fail "$mode: destroy left resources in the state"
  echo "  destroyed all $count"
  summary+=("$mode: $count resources applied, plan clean after a deploy, destroyed")
}

summary=()
check_mode journal -var allow_unauthenticated=true
check_mode postgres \
  -var jwt_issuer=https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Emulator \
  -var jwt_audience=emulator \
  -var jwks_url=https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Emulator/.well-known/jwks.json \
  -var enable_pipeline=true \
  -var codestar_connection_arn=arn:aws:codestar-connections:us-east-1:123456789012:connection/emulator \
  -var repository_id=banco-etheria/saldos \
  -var rds_ca_bundle_sha256=0000000000000000000000000000000000000000000000000000000000000000

printf '\n'
printf '%s\n' "${summary[@]}"
echo "terraform apply checks passed in $(($(date +%s) - started)) s"
