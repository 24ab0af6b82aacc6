# Shared by the wrk benchmarks (sourced): checks wrk, makes a scratch
# directory removed at exit with every server started, and starts servers
# pinned to CPU 0 (wrk runs on CPU 1).

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start_pinned NAME PORT WAIT_S COMMAND...: runs COMMAND on CPU 0, logging to
# $work/NAME.log and its PID in $work/NAME.pid, and waits up to WAIT_S seconds
# for GET /health on PORT to answer.
start_pinned() {
  local name=$1 port=$2 wait_s=$3; shift 3
  taskset -c 0 "$@" >>"$work/$name.log" 2>&1 &
  pids+=($!)
  echo $! >"$work/$name.pid"
  for _ in $(seq $((wait_s * 10))); do
    curl -fs -o /dev/null "http://127.0.0.1:$port/health" && return 0
    sleep 0.1
  done
  echo "$name did not start" >&2; cat "$work/$name.log" >&2; exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run SERVER PORT MIX CONNS: one wrk round of benches/wrk/MIX.lua against the
# server started as SERVER, appending "server mix conns req/s p99
# req-per-server-CPU-second non-2xx" to $work/results.
run() {
  local server=$1 port=$2 mix=$3 conns=$4 pid before after out
  pid=$(cat "$work/$server.pid")
  before=$(cpu_ticks "$pid")
  out=$(WRK_TOKEN_FILE=$([[ "$server" == jwt ]] && echo "$work/tokens.txt") taskset -c 1 wrk -t1 -c"$conns" -d"${seconds}s" --latency -s "benches/wrk/$mix.lua" "http://127.0.0.1:$port")
  after=$(cpu_ticks "$pid")
  echo "$out" | awk -v s="$server" -v m="$mix" -v c="$conns" -v cpu="$((after - before))" -v hz="$(getconf CLK_TCK)" '
    /requests in/ { requests = $1 }
    /Requests\/sec/ { rps = $2 }
    $1 == "99%" { p99 = $2 }
    /Non-2xx/ { errors = $5 }
    END { printf "%s %s %s %s %s %s %s\n", s, m, c, rps, p99, requests / (cpu / hz), errors + 0 }' >>"$work/results"
}
