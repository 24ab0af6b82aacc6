#!/usr/bin/env bash
# What recording movements and events (SPEC section 9) costs a debit, on the
# memory, journal and PostgreSQL storages: POST /retiro on a server without
# recording and on this tree's, **at the same time**. Both servers (and
# PostgreSQL) share CPU 0, two wrk share CPU 1, so whatever slows this shared
# machine down slows both in the same instants; their ratio of debits per
# CPU-second is recording's cost. (Run one after the other, rounds of the
# same binary swing by ±15 % here, three times the budget.)
#
# - memory and journal: this tree without recording, built here from HEAD
#   with benches/recording_off.patch (no event joins the feed's memory) and
#   run with --history-per-account 0 --events-retention 0s (no movement
#   kept, no segment kept for the feed).
# - postgres: BEFORE_PG, a release binary of a commit before the feed
#   (schema version 3: no feed_xid, no last_xid, debits_usuario for the
#   history index, no BRIN, no announcements), each on a database of its
#   own in one cluster. A server's CPU is its process's and its database's
#   backends' (pg_stat_activity), plus the VACUUM of its tables after each
#   round (autovacuum is off, so none lands in the other's round); WAL
#   writing, checkpoints and the other shared background work are in
#   neither.
#
# usage: benches/recording.sh BEFORE_PG [ROUNDS] [SECONDS]   (defaults: 5 rounds of 10 s)
#        CELLS="memory journal postgres"; CONNS="64 256" (each wrk's connections)
# needs: wrk, taskset, python3, two CPUs, PostgreSQL 15.
set -euo pipefail
cd "$(dirname "$0")/.."
before_pg=${1:?usage: benches/recording.sh BEFORE_PG [ROUNDS] [SECONDS]}
rounds=${2:-5}
seconds=${3:-10}
cells=${CELLS:-memory journal postgres}
cargo build --release --locked --bin saldos
source benches/common.sh
source benches/pg_cluster.sh
touch "$work/results"

mkdir "$work/off"
git archive HEAD | tar -x -C "$work/off"
patch -s -p1 -d "$work/off" <benches/recording_off.patch
cargo build --release --locked --bin saldos --manifest-path "$work/off/Cargo.toml" \
  --target-dir target/recording-off
cp target/recording-off/release/saldos "$work/saldos-off"
off=("$work/saldos-off" --history-per-account 0 --events-retention 0s)

flags=(--bind 127.0.0.1 --workers 1 --log-format text --metrics-addr "")
start_cluster 5690 autovacuum=off
psql_bench -c "CREATE DATABASE before" -c "CREATE DATABASE after"
pg_flags=(--opening-balance 1000000000000 --db-connections 8)
start_pinned memory-before 5691 5 "${off[@]}" "${flags[@]}" --port 5691 --storage memory
start_pinned memory-after 5692 5 target/release/saldos "${flags[@]}" --port 5692 --storage memory
start_pinned journal-before 5693 5 "${off[@]}" "${flags[@]}" --port 5693 --storage journal --data-dir "$work/jb"
start_pinned journal-after 5694 5 target/release/saldos "${flags[@]}" --port 5694 --storage journal --data-dir "$work/ja"
start_pinned postgres-before 5695 20 "$before_pg" "${flags[@]}" --port 5695 --storage postgres \
  --database-url "postgres://postgres@127.0.0.1:$pg_port/before" "${pg_flags[@]}"
start_pinned postgres-after 5696 20 target/release/saldos "${flags[@]}" --port 5696 --storage postgres \
  --database-url "postgres://postgres@127.0.0.1:$pg_port/after" "${pg_flags[@]}"
port_of() { case $1 in memory-before) echo 5691 ;; memory-after) echo 5692 ;; journal-before) echo 5693 ;;
  journal-after) echo 5694 ;; postgres-before) echo 5695 ;; postgres-after) echo 5696 ;; esac; }

# backends DB: the PIDs of the database's backends (the service's pool).
backends() { psql_bench -d "$1" -c "SELECT pid FROM pg_stat_activity WHERE datname = '$1' AND pid <> pg_backend_pid()"; }
# ticks SERVER PIDS...: CPU ticks of the server and of the given backends.
ticks() {
  local total pid
  total=$(cpu_ticks "$(cat "$work/$1.pid")"); shift
  for pid in "$@"; do total=$((total + $(cpu_ticks "$pid" 2>/dev/null || echo 0))); done
  echo "$total"
}
# vacuum_ticks DB: the CPU ticks of a VACUUM of the tables debits write.
vacuum_ticks() {
  local p0 p1
  p0=$(pg_ticks "$(cat "$work/postmaster.pid")")
  psql_bench -d "$1" -c "VACUUM accounts, debits, debit_batches"
  sleep 0.2 # the backend exits and is reaped: its time moves to the postmaster's
  p1=$(pg_ticks "$(cat "$work/postmaster.pid")")
  echo $((p1 - p0))
}

# pair CELL CONNS ROUND: wrk against the cell's two servers at once.
pair() {
  local cell=$1 conns=$2 round=$3 which pids_before=() pids_after=() t0b t0a t1b t1a vb=0 va=0
  if [[ $cell == postgres ]]; then
    mapfile -t pids_before < <(backends before); mapfile -t pids_after < <(backends after)
  fi
  t0b=$(ticks "$cell-before" "${pids_before[@]}"); t0a=$(ticks "$cell-after" "${pids_after[@]}")
  local clients=()
  for which in before after; do
    taskset -c 1 wrk -t1 -c"$conns" -d"${seconds}s" -s benches/wrk/retiro.lua \
      "http://127.0.0.1:$(port_of "$cell-$which")" >"$work/wrk-$which" &
    clients+=($!)
  done
  wait "${clients[@]}"
  t1b=$(ticks "$cell-before" "${pids_before[@]}"); t1a=$(ticks "$cell-after" "${pids_after[@]}")
  if [[ $cell == postgres ]]; then vb=$(vacuum_ticks before); va=$(vacuum_ticks after); fi
  for which in before after; do
    local cpu=$((t1a - t0a + va))
    [[ $which == before ]] && cpu=$((t1b - t0b + vb))
    awk -v c="$cell" -v n="$conns" -v r="$round" -v w="$which" -v cpu="$cpu" -v hz="$(getconf CLK_TCK)" '
      /requests in/ { requests = $1 } /Requests\/sec/ { rps = $2 } /Non-2xx/ { errors = $5 }
      END { printf "%s %s %s %s %s %s %s\n", c, n, r, w, rps, requests / (cpu / hz), errors + 0 }' \
      "$work/wrk-$which" | tee -a "$work/results" >&2
  done
}

if [[ $cells == *postgres* ]]; then
  # Warm-up, not measured: until its first checkpoint a new cluster creates
  # and zero-fills each WAL segment it writes, where a running one recycles
  # them.
  for which in before after; do
    taskset -c 1 wrk -t1 -c64 -d30s -s benches/wrk/retiro.lua "http://127.0.0.1:$(port_of "postgres-$which")" >/dev/null
    psql_bench -d "$which" -c VACUUM
  done
  psql_bench -c CHECKPOINT
fi
for round in $(seq "$rounds"); do
  for cell in $cells; do
    for conns in ${CONNS:-64 256}; do pair "$cell" "$conns" "$round"; done
  done
done

python3 - "$work/results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    cell, conns, rnd, which, rps, per_cpu, errors = line.split()
    if int(errors):
        sys.exit(f"{cell} {conns} {which} round {rnd}: {errors} non-2xx responses")
    runs[(cell, int(conns))].setdefault(int(rnd), {})[which] = (float(rps), float(per_cpu))
med = statistics.median
print("\nRecording's cost, POST /retiro, without and with recording at the same time\n")
print("| storage | conns | req/s without | req/s with | debits/CPU-s without | debits/CPU-s with "
      "| with/without, each round | median |")
print("|---|---|---|---|---|---|---|---|")
for (cell, conns), rounds in runs.items():
    pairs = [r for r in rounds.values() if len(r) == 2]
    ratios = [r["after"][1] / r["before"][1] for r in pairs]
    print(f"| {cell} | {conns} | {med(r['before'][0] for r in pairs):,.0f} | "
          f"{med(r['after'][0] for r in pairs):,.0f} | {med(r['before'][1] for r in pairs):,.0f} | "
          f"{med(r['after'][1] for r in pairs):,.0f} | {' '.join(f'{x:.3f}' for x in ratios)} | "
          f"{med(ratios):.3f} |")
PY
