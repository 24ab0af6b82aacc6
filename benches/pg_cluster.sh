# Shared by the PostgreSQL benchmarks (sourced after common.sh): a throwaway
# PostgreSQL 15 cluster on CPU 0 in $work, its CPU counted as the service's
# is (postmaster, its children and reaped children).
#
# start_cluster PORT [SETTING...]: initdb and start it on 127.0.0.1:PORT
# (fsync and synchronous_commit on, the defaults: a commit is durable; each
# SETTING, name=value, added), wait for it, and record the postmaster's PID
# in $work/postmaster.pid.

pg_bin=/usr/lib/postgresql/15/bin
as_postgres=()
((EUID == 0)) && as_postgres=(runuser -u postgres --) # the server refuses root

# cpu_ticks PID: the process's user and system CPU ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# pg_ticks POSTMASTER: PostgreSQL's CPU ticks: the postmaster's own and its
# reaped children's, plus every live child's.
pg_ticks() {
  local postmaster=$1 total child
  total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$postmaster/stat")
  for child in $(pgrep -P "$postmaster"); do
    total=$((total + $(cpu_ticks "$child" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

start_cluster() {
  pg_port=$1; shift
  local settings=() setting
  for setting in "$@"; do settings+=(-c "$setting"); done
  mkdir -p "$work/pg"
  chmod 755 "$work" # the postgres user must reach its directory
  ((EUID == 0)) && chown postgres "$work/pg"
  "${as_postgres[@]}" "$pg_bin/initdb" -D "$work/pg/data" -U postgres -A trust --no-sync >/dev/null
  taskset -c 0 "${as_postgres[@]}" "$pg_bin/postgres" -D "$work/pg/data" -p "$pg_port" \
    -c listen_addresses=127.0.0.1 -c "unix_socket_directories=$work/pg" \
    -c max_connections=300 -c shared_buffers=256MB "${settings[@]}" >>"$work/postgres.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break; sleep 0.1; done
  head -1 "$work/pg/data/postmaster.pid" >"$work/postmaster.pid"
  pids+=("$(cat "$work/postmaster.pid")")
}

# psql_bench ARGS...: psql on the cluster as postgres, quiet, unaligned.
psql_bench() { "$pg_bin/psql" -qAt -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }
