#!/usr/bin/env bash
# Snapshot cost under load: p99 of POST /retiro while snapshots of a large
# ledger are written, against the same server and load without snapshots.
# Two journal servers on CPU 0 (one worker each) hold ACCOUNTS accounts each
# (a synthetic journal from examples/journal_gen.rs, recovered at start):
# `steady` never rotates (1 TiB segments), `snapshotting` rotates every
# SEGMENT_BYTES, so a snapshot of the whole ledger is being written during
# most of every run. wrk on CPU 1 alternates between them. Prints medians of
# req/s and p99, the snapshots written, and each server's peak RSS during the
# runs (VmRSS sampled every 100 ms; VmHWM would include recovery's peak).
#
# usage: benches/snapshot.sh [ROUNDS] [SECONDS] [ACCOUNTS] [SEGMENT_BYTES]
#        (defaults: 3 rounds of 10 s, 1,000,000 accounts, 8 MiB segments)
#        SHARDS=n sets --shards on both servers (default: the service's own).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
accounts=${3:-1000000}
segment_bytes=${4:-$((8 << 20))}
cargo build --release --locked --bin saldos --example journal_gen
release=${CARGO_TARGET_DIR:-target}/release
source benches/common.sh

serve() { # name port segment_bytes
  start_pinned "$1" "$2" 60 "$release/saldos" --bind 127.0.0.1 --port "$2" --workers 1 \
    --storage journal --data-dir "$work/$1" --seed "" --journal-segment-bytes "$3" \
    --log-format text --metrics-addr 127.0.0.1:0 ${SHARDS:+--shards "$SHARDS"}
}

prepare() { # name port segment_bytes
  serve "$1" "$2" "$3"
  kill -TERM "$(cat "$work/$1.pid")"; wait "$(cat "$work/$1.pid")" || true
  "$release/examples/journal_gen" "$work/$1" "$accounts" 1 100000 $((64 << 20)) >/dev/null
  serve "$1" "$2" "$3"
}

prepare steady 5611 $((1 << 40))
prepare snapshotting 5612 "$segment_bytes"

sample_rss() { # pid file: highest VmRSS (KiB) until killed
  local peak=0 rss
  while rss=$(awk '/VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null); do
    ((rss > peak)) && { peak=$rss; echo "$peak" >"$2"; }
    sleep 0.1
  done
}

run() { # name port
  local out sampler
  sample_rss "$(cat "$work/$1.pid")" "$work/$1.rss.$RANDOM" &
  sampler=$!
  out=$(WRK_ACCOUNTS=$accounts taskset -c 1 wrk -t1 -c256 -d"${seconds}s" --latency -s benches/wrk/retiro.lua "http://127.0.0.1:$2")
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  echo "$out" | awk -v s="$1" '/Requests\/sec/ { rps = $2 } $1 == "99%" { p99 = $2 } END { print s, rps, p99 }' >>"$work/results"
}

for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  run steady 5611
  run snapshotting 5612
done

for name in steady snapshotting; do
  hwm=$(cat "$work/$name".rss.* | sort -n | tail -1)
  echo "$name peak_rss_kib $hwm snapshots $(grep -c 'snapshot written' "$work/$name.log" || true)" >>"$work/results"
done

python3 - "$work/results" <<'PY'
import collections, statistics, sys
sys.path.insert(0, "benches")
from wrk_results import ms
runs, extra = collections.defaultdict(list), {}
for line in open(sys.argv[1]):
    fields = line.split()
    if fields[1] == "peak_rss_kib":
        extra[fields[0]] = (int(fields[2]) / 1024, int(fields[4]))
    else:
        runs[fields[0]].append((float(fields[1]), ms(fields[2])))
print("| server | req/s | p99 ms | ×steady p99 | peak RSS MiB | snapshots |")
print("|---|---|---|---|---|---|")
base = statistics.median(r[1] for r in runs["steady"])
for name in ("steady", "snapshotting"):
    rps = statistics.median(r[0] for r in runs[name])
    p99 = statistics.median(r[1] for r in runs[name])
    print(f"| {name} | {rps:,.0f} | {p99:.2f} | {p99/base:.2f} | {extra[name][0]:.0f} | {extra[name][1]} |")
PY
