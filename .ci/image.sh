#!/usr/bin/env bash
# Build the real Dockerfile with podman and smoke-test the image the way ECS
# runs it: uid/gid 65532, read-only root filesystem, the journal on a volume
# at /data, the image's own health check, SIGTERM.
#
# The base images are pulled when a registry answers. Where none does (this
# project's machines reach no container registry), stand-ins with the same
# names are made from Debian's packages with mmdebstrap, kept for later runs,
# and the output says so: the runtime stand-in is a minimal trixie root
# (libc6, libgcc-s1, ca-certificates, a `nonroot` user 65532, no shell), the
# builder stand-in a trixie root with gcc, libc6-dev, pkg-config and this
# machine's own Rust toolchain. The Dockerfile itself is never altered.
#
# Every check says what failed; every container and volume it made is
# removed on exit. Needs root, podman, runc, mmdebstrap, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${SALDOS_CI_IMAGE:-localhost/saldos:ci}
DEBIAN_MIRROR=${SALDOS_CI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump when the stand-in recipe changes: older stand-ins are then rebuilt.
STAND_IN_RECIPE=2
STOP_BUDGET_S=10 # "well inside" ECS's 30 s stop timeout
# What this sandbox needs: runc (no crun), bounded ulimits (podman's default
# nofile exceeds the hard limit here), the host network (no CNI bridge; the
# build reaches crates.io through it, the service listens on loopback only).
PODMAN=(podman --runtime runc)
SANDBOX=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network host)

phase_started=0
phase() { # name
  phase_started=$(date +%s)
  printf '\n--- image: %s\n' "$*"
}
phase_done() {
  printf -- '--- took %ss\n' "$(($(date +%s) - phase_started))"
}
fail() {
  printf '\nIMAGE SMOKE TEST FAILED: %s\n' "$*" >&2
  exit 1
}

# --- tools -----------------------------------------------------------------

phase "tools"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc mmdebstrap
fi
echo "podman $(podman version --format '{{.Client.Version}}'), $(runc --version | head -n 1), mmdebstrap $(mmdebstrap --version | awk '{print $2}')"
phase_done

# --- base images -----------------------------------------------------------

# The names the Dockerfile uses, with its ARG defaults substituted.
rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)
builder_ref=$(awk '$1 == "FROM" && $NF == "chef" {print $2}' Dockerfile)
runtime_ref=$(awk '$1 == "FROM" && $NF == "runtime" {print $2}' Dockerfile)
builder_ref=${builder_ref//'${RUST_VERSION}'/$rust_version}
[[ -n $rust_version && $builder_ref == rust:* && -n $runtime_ref ]] ||
  fail "cannot read the base images from the Dockerfile (builder '$builder_ref', runtime '$runtime_ref')"
# A short name resolves to Docker Hub's library: tag the stand-in there.
builder_ref=docker.io/library/$builder_ref

stand_in_label() { # ref -> the stand-in label of the local image, empty for a real one
  "${PODMAN[@]}" image inspect --format '{{index .Labels "saldos.ci.stand-in"}}' "$1" 2>/dev/null || true
}

# mmdebstrap of trixie to a tar on stdout, then podman import with $@ as
# --change options. The extract variant runs extract hooks only.
make_rootfs() { # variant includes hook-script ref change...
  local variant=$1 includes=$2 hook=$3 ref=$4 hook_kind=customize
  shift 4
  [[ $variant != extract ]] || hook_kind=extract
  local changes=() c
  for c in "$@"; do changes+=(--change "$c"); done
  # Through a file: a failed mmdebstrap must not leave a half image tagged.
  nice -n 10 timeout 900 mmdebstrap --quiet --variant="$variant" --include="$includes" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --"$hook_kind"-hook="$hook" trixie "$work/rootfs.tar" "$DEBIAN_MIRROR" || return 1
  "${PODMAN[@]}" import --quiet "${changes[@]}" --message "saldos CI stand-in" \
    "$work/rootfs.tar" "$ref" >/dev/null || return 1
  rm -f "$work/rootfs.tar"
}

make_runtime_stand_in() {
  # Like distroless: packages unpacked, no maintainer scripts and no shell;
  # the CA bundle and the users written the way their build writes them.
  local hook='set -e
    cat "$1"/usr/share/ca-certificates/mozilla/*.crt >"$1/etc/ssl/certs/ca-certificates.crt"
    printf "%s\n" "root:x:0:0:root:/root:/sbin/nologin" "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin" \
      "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >"$1/etc/passwd"
    printf "%s\n" "root:x:0:" "nobody:x:65534:" "tty:x:5:" "staff:x:50:" "nonroot:x:65532:" >"$1/etc/group"
    install -d -m 0700 -o 65532 -g 65532 "$1/home/nonroot"
    chmod 1777 "$1/tmp"
    [ ! -e "$1/bin/sh" ] || { echo "runtime stand-in has a shell" >&2; exit 1; }'
  make_rootfs extract base-files,netbase,tzdata,libc6,libgcc-s1,ca-certificates "$hook" "$runtime_ref" \
    "LABEL saldos.ci.stand-in=$STAND_IN_RECIPE" \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    'USER 65532:65532' 'WORKDIR /home/nonroot'
}

make_builder_stand_in() {
  # This machine's toolchain (the only one to be had here) must be the
  # version the Dockerfile names, or the stand-in would lie about it.
  local sysroot version ca
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version)
  [[ $version == "rustc $rust_version "* ]] ||
    fail "builder stand-in: this machine's toolchain is '$version', the Dockerfile wants $rust_version"
  # This network signs registry TLS with the CA bundle in SSL_CERT_FILE: the
  # stand-in trusts it so that `cargo install cargo-chef` and the dependency
  # build reach crates.io. Never passed to the real bases or the image.
  ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
  [[ -r $ca ]] || fail "builder stand-in: no CA bundle at '$ca' (SSL_CERT_FILE)"
  local hook
  hook="set -e
    mkdir -p \"\$1/usr/local/rust/bin\" \"\$1/usr/local/cargo/bin\" \"\$1/usr/local/share/saldos-ci\"
    cp -a $(printf %q "$sysroot")/bin/cargo $(printf %q "$sysroot")/bin/rustc $(printf %q "$sysroot")/bin/rustdoc \"\$1/usr/local/rust/bin/\"
    cp -a $(printf %q "$sysroot")/lib \"\$1/usr/local/rust/\"
    install -m 0644 $(printf %q "$ca") \"\$1/usr/local/share/saldos-ci/ca-bundle.crt\"
    rm -rf \"\$1/var/lib/apt/lists\"/*"
  make_rootfs minbase ca-certificates,gcc,libc6-dev,pkg-config "$hook" "$builder_ref" \
    "LABEL saldos.ci.stand-in=$STAND_IN_RECIPE" \
    'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV CARGO_HOME=/usr/local/cargo' \
    "ENV RUST_VERSION=$rust_version" \
    'ENV SSL_CERT_FILE=/usr/local/share/saldos-ci/ca-bundle.crt' \
    'ENV CARGO_HTTP_CAINFO=/usr/local/share/saldos-ci/ca-bundle.crt'
}

stand_ins_used=()
base_image() { # ref maker
  local ref=$1 maker=$2 label
  phase "base image $ref"
  if timeout 60 "${PODMAN[@]}" pull --quiet "$ref" >/dev/null 2>"$work/pull.err"; then
    echo "pulled $ref"
  else
    echo "cannot pull $ref: $(tail -n 1 "$work/pull.err")"
    label=$(stand_in_label "$ref")
    if [[ $label == "$STAND_IN_RECIPE" ]]; then
      echo "STAND-IN: reusing the stand-in $ref made earlier from Debian's packages"
    elif "${PODMAN[@]}" image exists "$ref" && [[ -z $label || $label == "<no value>" ]]; then
      echo "using $ref as pulled earlier"
      phase_done
      return
    else
      echo "STAND-IN: making $ref from Debian trixie packages (mmdebstrap), not the real image"
      "$maker" || fail "could not make the stand-in for $ref"
    fi
    stand_ins_used+=("$ref")
  fi
  phase_done
}

# --- smoke test helpers ----------------------------------------------------

containers=()
volume=""
cleanup() {
  local c
  for c in "${containers[@]}"; do timeout 60 "${PODMAN[@]}" rm --force --volumes --time 0 "$c" >/dev/null 2>&1 || true; done
  [[ -z $volume ]] || timeout 60 "${PODMAN[@]}" volume rm -f "$volume" >/dev/null 2>&1 || true
  rm -rf "$work"
}
work=$(mktemp -d)
trap cleanup EXIT
trap 'exit 1' INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base_url="http://127.0.0.1:${port}"

start() { # name podman-run-args... -- saldos-args...
  local name=saldos-ci-$$-$1
  shift
  local run_args=() 
  while (($#)) && [[ $1 != -- ]]; do run_args+=("$1"); shift; done
  shift
  containers+=("$name")
  # As the ECS task definition runs it: read-only root with no tmpfs added,
  # every capability dropped, the image's own user. Loopback only (host
  # network: metrics on a free port, so nothing else on 9464 can clash).
  timeout 60 "${PODMAN[@]}" run --detach --name "$name" "${SANDBOX[@]}" \
    --read-only --read-only-tmpfs=false --cap-drop ALL \
    --env PORT="$port" --env SALDOS_BIND=127.0.0.1 --env SALDOS_METRICS_ADDR=127.0.0.1:0 \
    "${run_args[@]}" "$IMAGE" "$@" >/dev/null 2>"$work/podman.err" || {
    cat "$work/podman.err" >&2
    fail "podman run of $name did not start (podman's message above)"
  }
  local _
  for _ in $(seq 300); do
    if [[ $("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$name") != true ]]; then
      "${PODMAN[@]}" logs "$name" >&2 || true
      fail "$name exited before answering /health (its log above)"
    fi
    curl -fsS -o /dev/null --max-time 1 "$base_url/health" 2>/dev/null && return 0
    sleep 0.1
  done
  "${PODMAN[@]}" logs "$name" >&2 || true
  fail "$name did not answer 200 on /health within 30 s (its log above)"
}

expect_http() { # what method path [json-body] expected-status expected-body
  local what=$1 method=$2 path=$3 body=$4 status=$5 expected=$6 got
  local args=(-sS --max-time 5 -o "$work/body" -w '%{http_code}' -X "$method")
  [[ -z $body ]] || args+=(-H 'Content-Type: application/json' --data "$body")
  got=$(curl "${args[@]}" "$base_url$path") || fail "$what: $method $path got no answer"
  [[ $got == "$status" ]] || fail "$what: $method $path answered $got, not $status: $(cat "$work/body")"
  [[ $(cat "$work/body") == "$expected" ]] ||
    fail "$what: $method $path answered '$(cat "$work/body")', not '$expected'"
  echo "ok: $what ($method $path -> $got $expected)"
}

stop_exit_0() { # name
  local name=saldos-ci-$$-$1 t0 took code
  t0=$(date +%s%N)
  timeout 60 "${PODMAN[@]}" stop --time 30 "$name" >/dev/null 2>"$work/podman.err" || {
    cat "$work/podman.err" >&2
    fail "podman stop $name failed (podman's message above)"
  }
  took=$((($(date +%s%N) - t0) / 1000000))
  code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$name")
  if [[ $code != 0 ]]; then
    "${PODMAN[@]}" logs "$name" >&2 || true
    fail "$name: SIGTERM (podman stop) ended it with exit code $code, not 0 (its log above)"
  fi
  ((took < STOP_BUDGET_S * 1000)) || fail "$name: SIGTERM took ${took} ms to stop it, over ${STOP_BUDGET_S} s"
  # Into a file first: grep -q would end the pipe early (pipefail).
  "${PODMAN[@]}" logs "$name" >"$work/ctr.log" 2>&1 || true
  grep -q '"stopped"' "$work/ctr.log" || {
    cat "$work/ctr.log" >&2
    fail "$name: its log (above) has no \"stopped\" line after SIGTERM"
  }
  echo "ok: SIGTERM (podman stop) -> exit 0 in ${took} ms"
}

check_process() { # name: uid/gid and read-only root, read from the host's /proc
  local name=saldos-ci-$$-$1 pid uids gids root_opts data_opts
  pid=$("${PODMAN[@]}" inspect --format '{{.State.Pid}}' "$name")
  [[ $(cat "/proc/$pid/comm") == saldos ]] || fail "$name: its main process is $(cat "/proc/$pid/comm"), not saldos"
  uids=$(awk '$1 == "Uid:" {print $2, $3, $4, $5}' "/proc/$pid/status")
  gids=$(awk '$1 == "Gid:" {print $2, $3, $4, $5}' "/proc/$pid/status")
  [[ $uids == "65532 65532 65532 65532" && $gids == "65532 65532 65532 65532" ]] ||
    fail "$name: the process runs as uid ($uids) gid ($gids), not 65532:65532"
  echo "ok: the process runs as 65532:65532"
  # mountinfo: field 5 is the mount point, field 6 its per-mount options.
  root_opts=$(awk '$5 == "/" {o = $6} END {print o}' "/proc/$pid/mountinfo")
  [[ ,$root_opts, == *,ro,* ]] || fail "$name: the root filesystem is mounted '$root_opts', not read-only"
  echo "ok: root filesystem read-only ($root_opts)"
  if [[ $# -gt 1 ]]; then
    data_opts=$(awk '$5 == "/data" {o = $6} END {print o}' "/proc/$pid/mountinfo")
    [[ ,$data_opts, == *,rw,* ]] || fail "$name: /data is not a writable mount ('$data_opts')"
    echo "ok: /data is a writable volume ($data_opts)"
  fi
}

# --- build -----------------------------------------------------------------

base_image "$runtime_ref" make_runtime_stand_in
base_image "$builder_ref" make_builder_stand_in
if ((${#stand_ins_used[@]})); then
  printf '\n*** STAND-IN BASE IMAGES: no container registry answered. The image below is\n'
  printf '*** built FROM stand-ins made from Debian packages, not the real bases:\n'
  printf '***   %s\n' "${stand_ins_used[@]}"
  printf '*** The Dockerfile, the build context and the smoke test are the real ones.\n'
fi

phase "build the Dockerfile -> $IMAGE"
# No layer cache: podman 4.3 (buildah 1.28) matches cached COPY layers
# without their --chown, so a layer made by another Dockerfile on this
# machine (seen here: /data owned by root) would stand in for this one's.
# --layers=false keeps only the final image; the one it replaces goes.
old_id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
# --format docker keeps HEALTHCHECK (the OCI format drops it); --pull=never:
# the bases were settled above.
nice -n 10 timeout 1800 "${PODMAN[@]}" build --runtime runc "${SANDBOX[@]}" --pull=never \
  --no-cache --layers=false \
  --format docker --tag "$IMAGE" --file Dockerfile . >"$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log" >&2
  fail "podman build of the Dockerfile failed (last lines above)"
}
grep -E '^(\[[0-9]+/[0-9]+\] )?STEP' "$work/build.log" || true
new_id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE")
[[ -z $old_id || $old_id == "$new_id" ]] || "${PODMAN[@]}" rmi "$old_id" >/dev/null 2>&1 || true
phase_done

# --- smoke test ------------------------------------------------------------

phase "image configuration"
config=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}|{{json .Config.Volumes}}|{{json .Config.Entrypoint}}' "$IMAGE")
[[ $config == '65532:65532|{"/data":{}}|["/usr/local/bin/saldos"]' ]] ||
  fail "image config is '$config', expected user 65532:65532, volume /data, entrypoint saldos"
health=$("${PODMAN[@]}" image inspect --format '{{json .HealthCheck.Test}}' "$IMAGE")
[[ $health == '["CMD","/usr/local/bin/saldos","healthcheck"]' ]] ||
  fail "image HEALTHCHECK is '$health', not saldos healthcheck"
echo "ok: user 65532:65532, VOLUME /data, ENTRYPOINT saldos, HEALTHCHECK saldos healthcheck"
# The image's own /data: a new volume starts as its copy (Docker, podman).
root=$("${PODMAN[@]}" image mount "$IMAGE")
data_owner=$(stat -c '%u:%g %A' "$root/data" 2>&1) || data_owner="missing ($data_owner)"
"${PODMAN[@]}" image unmount "$IMAGE" >/dev/null
[[ $data_owner == "65532:65532 drwx"* ]] ||
  fail "the image's /data is '$data_owner', not a directory owned and writable by 65532:65532: the non-root user cannot write its journal"
echo "ok: the image's /data is owned and writable by 65532:65532 ($data_owner)"
phase_done

phase "journal storage on a volume: uid, read-only root, health, debit"
volume=saldos-ci-$$-data
timeout 60 "${PODMAN[@]}" volume create "$volume" >/dev/null || fail "podman volume create failed"
start journal1 --volume "$volume:/data" --
check_process journal1 data
expect_http "readiness" GET /health "" 200 '{"status":"ok"}'
expect_http "liveness" GET /health/live "" 200 '{"status":"ok"}'
timeout 30 "${PODMAN[@]}" exec "saldos-ci-$$-journal1" /usr/local/bin/saldos healthcheck ||
  fail "'saldos healthcheck' inside the container exited $?, not 0"
echo "ok: podman exec ... saldos healthcheck -> exit 0"
# Without systemd podman cannot schedule the image's HEALTHCHECK (it logs
# that on run and stop); run it once by hand instead.
timeout 30 "${PODMAN[@]}" healthcheck run "saldos-ci-$$-journal1" >/dev/null ||
  fail "the image's HEALTHCHECK (podman healthcheck run) reports unhealthy"
echo "ok: the image's HEALTHCHECK (podman healthcheck run) -> healthy"
expect_http "debit" POST /retiro '{"usuario":"usuario2","monto":1000}' 200 \
  '{"usuario":"usuario2","monto_retirado":1000,"nuevo_saldo":14000}'
expect_http "balance after the debit" GET /saldo/usuario2 "" 200 '{"usuario":"usuario2","saldo":14000}'
phase_done

phase "SIGTERM"
stop_exit_0 journal1
phase_done

phase "a new container on the same volume keeps the debit"
start journal2 --volume "$volume:/data" --
expect_http "balance after a restart" GET /saldo/usuario2 "" 200 '{"usuario":"usuario2","saldo":14000}'
stop_exit_0 journal2
phase_done

phase "memory storage, no volume at all"
# --image-volume ignore: not even an anonymous volume for the image's /data.
start memory --image-volume ignore -- --storage memory
check_process memory
expect_http "readiness (memory)" GET /health "" 200 '{"status":"ok"}'
expect_http "balance (memory)" GET /saldo/usuario2 "" 200 '{"usuario":"usuario2","saldo":15000}'
stop_exit_0 memory
phase_done

# --- sizes -----------------------------------------------------------------

phase "sizes"
binary_ctr=saldos-ci-$$-binary
containers+=("$binary_ctr")
"${PODMAN[@]}" create --name "$binary_ctr" --image-volume ignore "$IMAGE" >/dev/null
"${PODMAN[@]}" cp "$binary_ctr:/usr/local/bin/saldos" "$work/saldos"
image_bytes=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
base_bytes=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$runtime_ref")
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "binary /usr/local/bin/saldos: $(stat -c %s "$work/saldos") bytes ($(mib "$(stat -c %s "$work/saldos")"))"
echo "image $IMAGE: $(mib "$image_bytes"); runtime base $runtime_ref: $(mib "$base_bytes"); added: $(mib $((image_bytes - base_bytes)))"
if ((${#stand_ins_used[@]})); then
  echo "(the runtime base is a stand-in: the image's total size is not the real one, the added part is)"
fi
phase_done

echo
echo "image smoke test passed${stand_ins_used:+ (on STAND-IN base images: ${stand_ins_used[*]})}"
