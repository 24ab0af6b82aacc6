#!/usr/bin/env bash
# A real `terraform apply` of terraform/, then `terraform destroy`, in both
# storage modes at once (journal; postgres with authentication), against
# moto, a local AWS emulator, in server mode on 127.0.0.1. It catches what
# plans cannot see: the order AWS creates things in, what the provider sends
# and reads back. Between apply and destroy it plays a pipeline deploy and a
# scale-out behind Terraform's back (a new task definition revision and one
# task more, as CodePipeline and autoscaling do) and requires the next plan
# to change nothing. The optional pipeline and domain stay off: moto's
# CodeBuild refuses a CODEPIPELINE source, and a certificate would wait for
# its DNS validation.
#
# It never reaches AWS: every endpoint the provider knows (its schema's whole
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
# .ci/run creates). KEEP_WORK=1 keeps the working directory (logs, states).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/terraform/pinned_stack.sh
source tests/terraform/pinned_stack.sh

pinned_stack_require "terraform apply checks"
MOTO_VENV=${MOTO_VENV:-.ci/venv-moto}
STEP_TIMEOUT_S=600 # one apply, plan or destroy; moto answers in seconds
MOTO_STOP_S=10     # after SIGTERM, then SIGKILL
HELPER=tests/terraform/emulator.py
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
mode_pids=()
stop_pid() { # pid: SIGTERM, then SIGKILL after MOTO_STOP_S
  kill -TERM "$1" 2>/dev/null || return 0
  local _
  for _ in $(seq $((MOTO_STOP_S * 10))); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${mode_pids[@]}"; do
    pkill -TERM -P "$pid" 2>/dev/null || true # its `timeout`, which stops terraform
    stop_pid "$pid"
  done
  [[ -z $moto_pid ]] || stop_pid "$moto_pid"
  if [[ -n ${KEEP_WORK:-} ]]; then echo "kept $work"; else rm -rf "$work"; fi
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

# --- every provider endpoint on the emulator -----------------------------------

# The provider's overrides (emulator.py override): all its endpoints; where
# several names are aliases of one service (the provider warns, and will
# refuse, when more than one is set) the first only, as a plan of the bare
# provider block reports them (emulator.py aliases).
mkdir "$work/probe"
cat >"$work/probe/probe.tf" <<PROBE
terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = "$provider_version" }
  }
}
provider "aws" {
  region = "us-east-1"
}
data "aws_partition" "probe" {} # configures the provider, calls nothing
PROBE
pinned_stack_cli_config "$work/probe"
terraform -chdir="$work/probe" init -backend=false -input=false -no-color >/dev/null
terraform -chdir="$work/probe" providers schema -json >"$work/schema.json"

# Refuse to run unless every value the provider is given is the emulator's
# URL, the dead loopback proxy, loopback or the fake credential, and the
# SDK's own endpoint variables agree.
refuse_unless_loopback() { # override-file
  endpoint_count=0
  while read -r value; do
    case $value in
      "$emulator") endpoint_count=$((endpoint_count + 1)) ;;
      http://127.0.0.1:9 | 127.0.0.1 | emulator) ;;
      *) fail "$1 sets '$value', which is not this loopback emulator: refusing to run" ;;
    esac
  done < <(sed -n 's/^ *[a-z0-9_]* *= *"\(.*\)"$/\1/p' "$1")
  while IFS='=' read -r name value; do
    [[ $value == "$emulator" ]] || fail "$name=$value is not this loopback emulator: refusing to run"
  done < <(env | grep -E '^AWS_ENDPOINT_URL' || true)
  ((endpoint_count > 100)) || fail "only $endpoint_count endpoints in $1 point at the emulator: refusing to run"
}

override=$work/probe/provider_override.tf
echo '[]' >"$work/aliases.json"
python3 "$HELPER" override "$work/schema.json" "$emulator" "$work/aliases.json" >"$override"
refuse_unless_loopback "$override"
terraform -chdir="$work/probe" plan -json -input=false -no-color >"$work/probe.json" ||
  fail "the bare provider block does not plan against the emulator: $(tail -n 3 "$work/probe.json")"
python3 "$HELPER" aliases "$work/probe.json" >"$work/aliases.json"
python3 "$HELPER" override "$work/schema.json" "$emulator" "$work/aliases.json" >"$override"
refuse_unless_loopback "$override"
echo "all $endpoint_count provider endpoints (one name per service) and AWS_ENDPOINT_URL point at $emulator;" \
  "a proxy on closed 127.0.0.1:9 for anything else"
echo "terraform apply checks against hashicorp/aws $provider_version from $mirror (the stack declares ~> 6.0)"

# --- apply, a deploy behind Terraform's back, a plan, destroy ------------------

tf_step() { # dir what log terraform-args...
  local dir=$1 what=$2 log=$3 t0 code=0
  shift 3
  t0=$(date +%s)
  timeout --kill-after=30 "$STEP_TIMEOUT_S" terraform -chdir="$dir" "$@" -input=false -no-color \
    -compact-warnings >"$log" 2>&1 || code=$?
  if ((code != 0 && code != 2)) || { ((code == 2)) && [[ $1 != plan ]]; }; then
    tail -n 30 "$log"
    ((code != 124)) || fail "$what did not finish within ${STEP_TIMEOUT_S} s (last lines above)"
    fail "$what failed with exit code $code (last lines above)"
  fi
  echo "$what: $(($(date +%s) - t0)) s"
  return "$code"
}

# One mode in its own copy of the stack and its own names (the two run at
# once against the one emulator).
check_mode() { # mode terraform-var-args...
  local mode=$1 prefix=saldos-${1:0:1} dir=$work/$1 count plan_code=0
  shift
  local vars=(-var image_tag=emulator -var "storage=$mode" -var "name_prefix=$prefix"
    -var emulator_unsupported_off=true -var db_deletion_protection=false -var db_skip_final_snapshot=true "$@")
  mkdir "$dir"
  pinned_stack_copy "$dir"
  cp "$override" "$dir/emulator_override.tf"
  refuse_unless_loopback "$dir/emulator_override.tf"
  terraform -chdir="$dir" init -backend=false -input=false -no-color >/dev/null
  tf_step "$dir" "apply ($mode)" "$dir/apply.log" apply -auto-approve "${vars[@]}"
  count=$(terraform -chdir="$dir" state list | grep -cv '^data\.')
  echo "  created $count resources"
  "$MOTO_VENV/bin/python" "$HELPER" deploy "$emulator" "$prefix"
  tf_step "$dir" "plan after the deploy ($mode)" "$dir/plan.log" plan -detailed-exitcode \
    -out="$dir/plan.tfplan" "${vars[@]}" || plan_code=$?
  terraform -chdir="$dir" show -json "$dir/plan.tfplan" >"$dir/plan.json"
  python3 "$HELPER" plan-check "$dir/plan.json" ||
    fail "$mode: after a pipeline deploy and a scale-out, terraform plan wants the changes above: Terraform would fight the pipeline or autoscaling"
  echo "  plan after the deploy: no changes (exit code $plan_code: the emulator's differences above only)"
  "$MOTO_VENV/bin/python" "$HELPER" before-destroy "$emulator" "$prefix"
  tf_step "$dir" "destroy ($mode)" "$dir/destroy.log" destroy -auto-approve "${vars[@]}"
  [[ -z $(terraform -chdir="$dir" state list) ]] || fail "$mode: destroy left resources in the state"
  echo "  destroyed all $count"
  echo "$mode: $count resources applied, plan unchanged after a deploy, all destroyed" >"$dir/summary"
}

echo
echo "left out for the emulator (emulator_unsupported_off = true; terraform/variables.tf):"
mkdir "$work/list"
pinned_stack_copy "$work/list"
terraform -chdir="$work/list" init -backend=false -input=false -no-color >/dev/null
echo 'jsonencode(local.emulator_unsupported)' |
  terraform -chdir="$work/list" console -var image_tag=emulator -var allow_unauthenticated=true |
  python3 -c 'import json, sys; [print(f"  - {k}: {v}") for k, v in sorted(json.loads(json.loads(sys.stdin.read())).items())]'

modes=(journal postgres)
check_mode journal -var allow_unauthenticated=true >"$work/journal.out" 2>&1 &
mode_pids+=($!)
check_mode postgres \
  -var jwt_issuer=https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Emulator \
  -var jwt_audience=emulator \
  -var jwks_url=https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Emulator/.well-known/jwks.json \
  >"$work/postgres.out" 2>&1 &
mode_pids+=($!)
failed=0
for i in "${!modes[@]}"; do
  wait "${mode_pids[$i]}" || failed=1
  printf '\n--- %s mode\n' "${modes[$i]}"
  cat "$work/${modes[$i]}.out"
done
mode_pids=()
((failed == 0)) || {
  grep -E 'NotImplementedError|Error' "$work/moto.log" | sort | uniq -c | sort -rn | head -n 10 || true
  fail "see the mode above that failed (the emulator's own errors just above)"
}

printf '\n'
cat "$work/journal/summary" "$work/postgres/summary"
echo "terraform apply checks passed in $(($(date +%s) - started)) s"
