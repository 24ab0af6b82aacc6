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
