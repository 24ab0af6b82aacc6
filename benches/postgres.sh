#!/usr/bin/env bash
# The PostgreSQL cells of the speed harness (benches/harness.sh runs them
# too): a throwaway PostgreSQL 15 cluster and saldos --storage postgres, both
# pinned to CPU 0 (an app and its database on one small box), wrk or pgbench
# on CPU 1 with the same client count: POST /retiro and GET /saldo at 64 and
# 256 connections beside pgbench -M prepared running the single-debit
# transaction (pgbench/single_debit.sql: upsert, conditional update with the
# audit row, commit) and the select-only one (-S). Rounds alternate pgbench
# and the service. Prints medians of req/s (tps), p99 (pgbench: mean
# latency), CPU seconds of the server and of PostgreSQL (postmaster, its
# children and reaped children), the ratio to pgbench with the issue's
# targets (retiro ≥ 5×, saldo ≥ 1×), and mean debits per batch (= commit)
# from the debit_batches table.
#
# usage: benches/postgres.sh [ROUNDS] [SECONDS]    (defaults: 3 rounds of 10 s)
#        DB_CONNECTIONS=N: the service's --db-connections (default 8; pinned
#        to one CPU its own default would be 4)
# needs: wrk, taskset, python3, two CPUs, PostgreSQL 15 (server and pgbench).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
cargo build --release --locked --bin saldos
source benches/common.sh
touch "$work/results"

source benches/pg_cluster.sh
start_cluster 5621
psql_bench -c "CREATE DATABASE saldos" -c "CREATE DATABASE pgbench"
"$pg_bin/pgbench" -q -i -s 10 -h 127.0.0.1 -p "$pg_port" -U postgres pgbench >/dev/null 2>&1
start_pinned postgres 5620 10 target/release/saldos --bind 127.0.0.1 --port 5620 --workers 1 \
  --storage postgres --database-url "postgres://postgres@127.0.0.1:$pg_port/saldos" \
  --opening-balance 1000000000000 --db-connections "${DB_CONNECTIONS:-8}" --log-format text

# pgbench_run NAME CONNS ARGS...: pgbench on CPU 1, same columns as `run`
# (its server CPU is PostgreSQL's).
pgbench_run() {
  local name=$1 conns=$2 postmaster before after out; shift 2
  postmaster=$(cat "$work/postmaster.pid")
  before=$(pg_ticks "$postmaster")
  out=$(taskset -c 1 "$pg_bin/pgbench" -n -M prepared -j1 -c"$conns" -T"$seconds" -r \
    -h 127.0.0.1 -p "$pg_port" -U postgres "$@" 2>&1)
  sleep 0.5 # pgbench's backends exit and are reaped: their time moves to the postmaster's
  after=$(pg_ticks "$postmaster")
  echo "$out" | awk -v s="$name" -v c="$conns" -v cpu="$((after - before))" -v hz="$(getconf CLK_TCK)" '
    /number of transactions actually processed/ { split($0, parts, ": "); split(parts[2], n, "/"); tx = n[1] }
    /^tps/ { tps = $3 }
    /latency average/ { avg = $4 }
    END { printf "%s pgbench %s %s %sms %s 0 %s %s\n", s, c, tps, avg, tx / (cpu / hz), cpu / hz, cpu / hz }' >>"$work/results"
}

run() { # server port mix conns
  local server=$1 port=$2 mix=$3 conns=$4 pid before after out pg_before=0 pg_after=0
  pid=$(cat "$work/$server.pid")
  before=$(cpu_ticks "$pid")
  pg_before=$(pg_ticks "$(cat "$work/postmaster.pid")")
  out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${seconds}s" --latency -s "benches/wrk/$mix.lua" "http://127.0.0.1:$port")
  after=$(cpu_ticks "$pid")
  pg_after=$(pg_ticks "$(cat "$work/postmaster.pid")")
  echo "$out" | awk -v s="$server" -v m="$mix" -v c="$conns" -v cpu="$((after - before))" \
    -v pg="$((pg_after - pg_before))" -v hz="$(getconf CLK_TCK)" '
    /requests in/ { requests = $1 }
    /Requests\/sec/ { rps = $2 }
    $1 == "99%" { p99 = $2 }
    /Non-2xx/ { errors = $5 }
    END { printf "%s %s %s %s %s %s %s %s %s\n", s, m, c, rps, p99, requests / (cpu / hz), errors + 0, cpu / hz, pg / hz }' >>"$work/results"
}

# Debit batches and the debits they carried so far (each batch one commit).
batch_totals() { psql_bench -d saldos -c "SELECT count(*), coalesce(sum(debits), 0) FROM debit_batches"; }

for round in $(seq "$rounds"); do
  echo "postgres round $round/$rounds" >&2
  for conns in 64 256; do
    pgbench_run pgbench-debit "$conns" -f benches/pgbench/single_debit.sql saldos
    IFS='|' read -r batches_before debits_before <<<"$(batch_totals)"
    run postgres 5620 retiro "$conns"
    IFS='|' read -r batches_after debits_after <<<"$(batch_totals)"
    echo "postgres retiro $conns: $((debits_after - debits_before)) debits in $((batches_after - batches_before)) batches (commits)" >>"$work/batches"
    pgbench_run pgbench-select "$conns" -S pgbench
    run postgres 5620 saldo "$conns"
  done
done
cat "$work/batches"
awk '{d += $4; b += $7} END { if (b) printf "mean debits per batch (= per commit): %.1f\n", d / b }' "$work/batches"

python3 - "$work/results" <<'PY'
import collections, statistics, sys

def ms(text):
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)

runs = collections.defaultdict(list)
cpu = collections.defaultdict(list)
for line in open(sys.argv[1]):
    server, mix, conns, rps, p99, per_cpu, errors, server_s, pg_s = line.split()
    if int(errors):
        sys.exit(f"{server} {mix} {conns}: {errors} non-2xx responses")
    runs[(server, mix, int(conns))].append((float(rps), ms(p99), float(per_cpu)))
    cpu[(server, mix, int(conns))].append((float(server_s), float(pg_s)))

def median(key, field):
    return statistics.median(run[field] for run in runs[key])

# PostgreSQL cells: the service beside pgbench's ceiling at the same client
# count (single debit per transaction for retiro, select-only for saldo).
pg_rows = [(conns, mix) for (server, mix, conns) in runs if server == "postgres"]
if pg_rows:
    print("| cell | conns | req/s (tps) | p99 ms (pgbench: mean) | server CPU s | PostgreSQL CPU s | × pgbench | target |")
    print("|---|---|---|---|---|---|---|---|")
    refs = {"retiro": ("pgbench-debit", 5.0), "saldo": ("pgbench-select", 1.0)}
    for conns, mix in sorted(set(pg_rows)):
        ref_name, target = refs[mix]
        ref = ("pgbench", conns)
        ref_key = (ref_name, "pgbench", conns)
        key = ("postgres", mix, conns)
        rps, p99 = median(key, 0), median(key, 1)
        server_s = statistics.median(c[0] for c in cpu[key])
        pg_s = statistics.median(c[1] for c in cpu[key])
        base = median(ref_key, 0)
        base_pg_s = statistics.median(c[1] for c in cpu[ref_key])
        print(f"| {ref_name} | {conns} | {base:,.0f} | {median(ref_key, 1):.2f} | – | {base_pg_s:.1f} | 1.00 | |")
        met = "met" if rps >= target * base else "NOT met"
        print(f"| postgres {mix} | {conns} | {rps:,.0f} | {p99:.2f} | {server_s:.1f} | {pg_s:.1f} | {rps/base:.2f} | ≥ {target:g}× ({met}) |")
PY
