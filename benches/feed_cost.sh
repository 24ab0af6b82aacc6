#!/usr/bin/env bash
# Before/after of the feed's cost on POST /retiro (postgres storage), the
# method of benches/postgres.sh: one PostgreSQL 15 cluster and the service on
# CPU 0, wrk on CPU 1; the two binaries on databases of their own, rounds
# alternating. Prints req/s, p99, server and PostgreSQL CPU seconds,
# PostgreSQL CPU ms per batch (commit) and µs per debit, medians of the rounds.
# usage: benches/feed_cost.sh BEFORE_BIN AFTER_BIN [ROUNDS] [SECONDS]
#        CONNS="64 256": the client counts; AFTER_SQL=FILE: SQL run on the
#        after database once both servers are up (an experiment's variant)
# needs: wrk, taskset, python3, two CPUs, PostgreSQL 15.
set -euo pipefail
before_bin=$1 after_bin=$2 rounds=${3:-3} seconds=${4:-10}
cd "$(dirname "$0")/.."
source benches/common.sh
source benches/pg_cluster.sh
start_cluster 5631
psql_bench -c "CREATE DATABASE before" -c "CREATE DATABASE after"
for which in before after; do
  bin=${which}_bin; port=$([[ $which == before ]] && echo 5640 || echo 5641)
  start_pinned "$which" "$port" 20 "${!bin}" --bind 127.0.0.1 --port "$port" --workers 1 \
    --storage postgres --database-url "postgres://postgres@127.0.0.1:$pg_port/$which" \
    --opening-balance 1000000000000 --db-connections "${DB_CONNECTIONS:-8}" --log-format text \
    --metrics-addr ""
done
[[ -n ${AFTER_SQL:-} ]] && psql_bench -d after -f "$AFTER_SQL"
batches() { psql_bench -d "$1" -c "SELECT count(*) FROM debit_batches WHERE debits > 0"; }
for round in $(seq "$rounds"); do
  for conns in ${CONNS:-64 256}; do
    for which in before after; do
      port=$([[ $which == before ]] && echo 5640 || echo 5641)
      pid=$(cat "$work/$which.pid")
      b0=$(batches "$which"); s0=$(cpu_ticks "$pid"); p0=$(pg_ticks "$(cat "$work/postmaster.pid")")
      out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${seconds}s" --latency -s benches/wrk/retiro.lua "http://127.0.0.1:$port")
      s1=$(cpu_ticks "$pid"); p1=$(pg_ticks "$(cat "$work/postmaster.pid")"); b1=$(batches "$which")
      echo "$out" | awk -v w="$which" -v c="$conns" -v s="$((s1 - s0))" -v p="$((p1 - p0))" -v b="$((b1 - b0))" -v hz="$(getconf CLK_TCK)" '
        /Requests\/sec/ { rps = $2 } $1 == "99%" { p99 = $2 } /Non-2xx/ { errors = $5 }
        END { printf "%s %s %s %s %s %s %s %s\n", w, c, rps, p99, s / hz, p / hz, b, errors + 0 }' | tee -a "$work/results" >&2
    done
  done
done
python3 - "$work/results" "$seconds" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
seconds = float(sys.argv[2])
for line in open(sys.argv[1]):
    w, c, rps, p99, s, p, b, e = line.split()
    rows[(w, int(c))].append((float(rps), p99, float(s), float(p), int(b), int(e)))
print("| binary | conns | req/s (median) | rounds req/s | server CPU s | PostgreSQL CPU s | batches | PG CPU ms/batch | PG CPU µs/debit |")
print("|---|---|---|---|---|---|---|---|---|")
for c in [int(x) for x in __import__("os").environ.get("CONNS","64 256").split()]:
    base = None
    for w in ("before", "after"):
        r = rows[(w, c)]
        rps = statistics.median(x[0] for x in r)
        s = statistics.median(x[2] for x in r); p = statistics.median(x[3] for x in r)
        b = statistics.median(x[4] for x in r)
        per_batch = 1000 * statistics.median(x[3] / x[4] for x in r if x[4])
        per_debit = 1e6 * statistics.median(x[3] / (x[0] * seconds) for x in r)
        note = "" if base is None else f" ({100 * (rps / base - 1):+.1f} %)"
        base = base or rps
        print(f"| {w} | {c} | {rps:,.0f}{note} | {' '.join(f'{x[0]:,.0f}' for x in r)} | {s:.1f} | {p:.1f} | {b:,.0f} | {per_batch:.2f} | {per_debit:.1f} |")
PY
