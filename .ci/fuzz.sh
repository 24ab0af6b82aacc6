#!/usr/bin/env bash
# Bounded fuzzing for CI: builds every cargo-fuzz target in fuzz/ once, then
# runs each one `cargo fuzz list` names for SECONDS_PER_TARGET seconds (default
# 30), starting from a scratch copy of its seeds in fuzz/seeds/<target>/ so the
# work tree stays clean. Any crash, per-input timeout, leak or memory blow-up
# fails the run, naming the target and the input libFuzzer saved.
#
# Usage: .ci/fuzz.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
# cargo-fuzz needs nightly for -Zsanitizer=address; it is not fetched here.
TOOLCHAIN=nightly
# Inputs are at most one request body (BODY_BYTES_MAX, the largest input any
# target is given); a single input slower than PER_INPUT_TIMEOUT_S is a hang.
MAX_LEN=4096
PER_INPUT_TIMEOUT_S=10
RSS_LIMIT_MB=2048

seconds=${1:-30}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS_PER_TARGET] (a positive integer, not '$seconds')" >&2
  exit 2
fi

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "fuzz: the $TOOLCHAIN toolchain is missing; cargo fuzz needs it" >&2
  exit 1
fi
if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz ${CARGO_FUZZ_VERSION}" ]]; then
  echo "installing cargo-fuzz ${CARGO_FUZZ_VERSION}"
  cargo install --locked --quiet "cargo-fuzz@${CARGO_FUZZ_VERSION}"
fi
cargo fuzz --version

install_seconds=$SECONDS
# One build for every target (AddressSanitizer, debug assertions on); the runs
# below reuse it.
cargo "+$TOOLCHAIN" fuzz build
if ! git diff --quiet -- fuzz/Cargo.lock 2>/dev/null; then
  echo "fuzz: fuzz/Cargo.lock changed during the build; commit the updated lock file" >&2
  exit 1
fi
build_seconds=$((SECONDS - install_seconds))

mapfile -t targets < <(cargo "+$TOOLCHAIN" fuzz list)
if ((${#targets[@]} == 0)); then
  echo "fuzz: cargo fuzz list names no target" >&2
  exit 1
fi
# A file dropped into fuzz_targets/ without its [[bin]] entry would silently
# never run: refuse it.
for file in fuzz/fuzz_targets/*.rs; do
  name=$(basename "$file" .rs)
  if ! printf '%s\n' "${targets[@]}" | grep -qx -- "$name"; then
    echo "fuzz: $file has no [[bin]] in fuzz/Cargo.toml (add one, or use 'cargo fuzz add $name')" >&2
    exit 1
  fi
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
total_runs=0
for target in "${targets[@]}"; do
  corpus="$scratch/corpus-$target"
  log="$scratch/$target.log"
  mkdir -p "$corpus"
  if [[ -d "fuzz/seeds/$target" ]]; then
    cp -R "fuzz/seeds/$target/." "$corpus/"
  else
    echo "fuzz: warning: no fuzz/seeds/$target/; $target starts from an empty corpus"
  fi
  status=0
  cargo "+$TOOLCHAIN" fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -max_len="$MAX_LEN" -timeout="$PER_INPUT_TIMEOUT_S" \
    -rss_limit_mb="$RSS_LIMIT_MB" -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  if ((status != 0)); then
    # libFuzzer names the saved input ("Test unit written to ..."); a crash at
    # start-up (or in the build) may save none.
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "FUZZ FAILURE: target $target (exit $status) after ${runs:-?} executions; artifact: ${artifact:-none}" >&2
    tail -n 60 "$log" >&2
    if [[ -n "$artifact" && -f "$artifact" ]]; then
      echo "artifact $artifact, base64: $(base64 -w 0 "$artifact")" >&2
      echo "reproduce: cargo +$TOOLCHAIN fuzz run $target $artifact" >&2
    fi
    failed+=("$target")
  elif [[ -z "$runs" ]]; then
    echo "FUZZ FAILURE: target $target exited 0 but printed no final stats" >&2
    tail -n 20 "$log" >&2
    failed+=("$target")
  else
    corpus_size=$(find "$corpus" -type f | wc -l)
    echo "fuzz: $target: $runs executions in ${seconds} s, corpus $corpus_size inputs, clean"
    total_runs=$((total_runs + runs))
  fi
done

echo "fuzz summary: ${#targets[@]} targets, $((${#targets[@]} - ${#failed[@]})) clean," \
  "${#failed[@]} failed, $total_runs executions; install ${install_seconds} s, build ${build_seconds} s, whole step ${SECONDS} s"
if ((${#failed[@]} > 0)); then
  echo "fuzz: FAILED targets: ${failed[*]}" >&2
  exit 1
fi
