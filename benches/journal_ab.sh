#!/usr/bin/env bash
# Two journal binaries side by side: POST /retiro on journal storage from a
# binary built before a change (BEFORE) and from this tree, beside the bare
# hyper baseline, all pinned to CPU 0 with one worker, wrk on CPU 1,
# alternating rounds. Prints medians of req/s, p99 and requests per server
# CPU-second with their ratios to the baseline, then, for each journal
# server, one more window of per-request costs: worker and writer thread CPU
# (µs per request, from /proc/PID/task/*/stat), records per batch, write+sync
# time per batch and the writer's voluntary context switches per batch (from
# the journal's own histograms and /proc).
#
# usage: benches/journal_ab.sh BEFORE [ROUNDS] [SECONDS] [CONNS]
#        (defaults: 3 rounds of 4 s, 256 connections)
set -euo pipefail
cd "$(dirname "$0")/.."
before=$(realpath "$1")
rounds=${2:-3}
seconds=${3:-4}
conns=${4:-256}
cargo build --release --locked --bin saldos --example hyper_baseline
release=${CARGO_TARGET_DIR:-target}/release
source benches/common.sh

journal=(--bind 127.0.0.1 --workers 1 --log-format text --storage journal)
start_pinned baseline 5651 5 "$release/examples/hyper_baseline" 5651 1
start_pinned before 5652 5 "$before" "${journal[@]}" --port 5652 --metrics-addr 127.0.0.1:5662 --data-dir "$work/before"
start_pinned after 5653 5 "$release/saldos" "${journal[@]}" --port 5653 --metrics-addr 127.0.0.1:5663 --data-dir "$work/after"

for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  run baseline 5651 retiro "$conns"
  run before 5652 retiro "$conns"
  run after 5653 retiro "$conns"
done

python3 - "$work/results" <<'PY'
import statistics, sys
sys.path.insert(0, "benches")
from wrk_results import runs as read_runs
runs = read_runs(sys.argv[1], lambda server, mix, conns: server)
base = [statistics.median(run[f] for run in runs["baseline"]) for f in range(3)]
print("| server | req/s | ×baseline | p99 ms | ×baseline | req/CPU-s | ×baseline |")
print("|---|---|---|---|---|---|---|")
for server in ("baseline", "before", "after"):
    row = [statistics.median(run[f] for run in runs[server]) for f in range(3)]
    print(f"| {server} | {row[0]:,.0f} | {row[0]/base[0]:.2f} | {row[1]:.2f} | {row[1]/base[1]:.2f} | "
          f"{row[2]:,.0f} | {row[2]/base[2]:.2f} |")
PY

# counters PID METRICS_PORT: "name value" lines: each thread's CPU ticks and
# voluntary switches, the journal's histogram sums and the requests served.
counters() {
  for task in /proc/"$1"/task/*; do
    echo "cpu:$(tr ' ' _ <"$task/comm") $(awk '{print $14 + $15}' "$task/stat")"
    echo "switches:$(tr ' ' _ <"$task/comm") $(awk '/^voluntary_ctxt/ {print $2}' "$task/status")"
  done
  curl -fs "http://127.0.0.1:$2/metrics" | awk '
    /^saldos_journal_(sync_duration_seconds|batch_records)_(sum|count) / { print $1, $2 }
    /^saldos_http_requests_total/ { requests += $2 }
    END { print "requests", requests }'
}

echo
echo "| server | req/s | worker µs/req | writer µs/req | records/batch | write+sync µs | writer switches/batch |"
echo "|---|---|---|---|---|---|---|"
for server in before after; do
  pid=$(cat "$work/$server.pid")
  port=$([[ $server == before ]] && echo 5652 || echo 5653)
  metrics=$([[ $server == before ]] && echo 5662 || echo 5663)
  taskset -c 1 wrk -t1 -c"$conns" -d"$((seconds + 2))s" -s benches/wrk/retiro.lua "http://127.0.0.1:$port" >/dev/null &
  load=$!
  sleep 1
  counters "$pid" "$metrics" | sort >"$work/counters-0"
  sleep "$seconds"
  counters "$pid" "$metrics" | sort >"$work/counters-1"
  wait "$load"
  join "$work/counters-0" "$work/counters-1" | awk -v s="$server" -v secs="$seconds" -v hz="$(getconf CLK_TCK)" '
    { d[$1] = $3 - $2 }
    END {
      r = d["requests"]; b = d["saldos_journal_batch_records_count"]
      printf "| %s | %.0f | %.2f | %.2f | %.0f | %.0f | %.1f |\n", s, r / secs,
        d["cpu:tokio-rt-worker"] * 1e6 / hz / r, d["cpu:saldos-journal"] * 1e6 / hz / r,
        d["saldos_journal_batch_records_sum"] / b,
        d["saldos_journal_sync_duration_seconds_sum"] * 1e6 / b, d["switches:saldos-journal"] / b }'
done
