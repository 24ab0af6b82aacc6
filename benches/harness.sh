#!/usr/bin/env bash
# Side-by-side speed harness: saldos (memory and journal storage) against the
# bare hyper baseline (examples/hyper_baseline.rs), with wrk on loopback.
# Each server runs pinned to CPU 0 with one worker; wrk runs pinned to CPU 1
# with one thread. Rounds alternate baseline and service so drift on a shared
# machine hits both. Prints medians of req/s, p99 and requests per server
# CPU-second (utime+stime from /proc/PID/stat), and their ratios to baseline.
#
# The auth cell: POST /retiro on memory storage with --auth jwt and 1,000
# distinct valid RS256 tokens in rotation (one per account, minted with
# `saldos dev-token` from a throwaway key) against the same requests without
# authentication; its table gives the ratio to the run without auth.
#
# usage: benches/harness.sh [ROUNDS] [SECONDS]    (defaults: 3 rounds of 10 s)
#        HARNESS_CELLS=auth benches/harness.sh    (the auth cell only)
# needs: wrk, taskset, python3, openssl, two CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
cargo build --release --locked --bin saldos --example hyper_baseline
source benches/common.sh

start_pinned baseline 5601 5 target/release/examples/hyper_baseline 5601 1
start_pinned memory 5602 5 target/release/saldos --bind 127.0.0.1 --port 5602 --workers 1 --storage memory --log-format text
start_pinned journal 5603 5 target/release/saldos --bind 127.0.0.1 --port 5603 --workers 1 --storage journal --data-dir "$work/data" --log-format text

# The auth cell's issuer: a throwaway key, its JWKS in a file, 1,000 tokens.
auth_tokens=1000
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/key.pem" 2>/dev/null
target/release/saldos dev-token --key "$work/key.pem" --kid bench --jwks >"$work/jwks.json"
for i in $(seq 0 $((auth_tokens - 1))); do
  target/release/saldos dev-token --key "$work/key.pem" --kid bench --issuer https://bench.invalid \
    --audience saldos-bench --sub "cliente$i" --ttl 2h
done >"$work/tokens.txt"
start_pinned jwt 5604 5 target/release/saldos --bind 127.0.0.1 --port 5604 --workers 1 --storage memory --log-format text \
  --auth jwt --jwt-issuer https://bench.invalid --jwt-audience saldos-bench --jwks-file "$work/jwks.json"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # server port mix conns
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

for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  for conns in 64 256; do
    run memory 5602 retiro_auth "$conns"
    run jwt 5604 retiro_auth "$conns"
    [[ "${HARNESS_CELLS:-all}" == auth ]] && continue
    for mix in saldo retiro; do
      run baseline 5601 "$mix" "$conns"
      run memory 5602 "$mix" "$conns"
    done
    run baseline 5601 retiro "$conns"
    run journal 5603 retiro "$conns"
  done
done

python3 - "$work/results" <<'PY'
import collections, statistics, sys

def ms(text):
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)

runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    server, mix, conns, rps, p99, per_cpu, errors = line.split()
    if int(errors):
        sys.exit(f"{server} {mix} {conns}: {errors} non-2xx responses")
    runs[(server, mix, int(conns))].append((float(rps), ms(p99), float(per_cpu)))

def median(key, field):
    return statistics.median(run[field] for run in runs[key])

print("| auth | mix | conns | req/s | ×no auth | p99 ms | ×no auth | req/CPU-s | ×no auth |")
print("|---|---|---|---|---|---|---|---|---|")
for (server, mix, conns) in sorted(runs):
    if server != "jwt":
        continue
    row = [median((server, mix, conns), f) for f in range(3)]
    ref = [median(("memory", mix, conns), f) for f in range(3)]
    print(f"| none (memory) | {mix} | {conns} | {ref[0]:,.0f} | 1.00 | {ref[1]:.2f} | 1.00 | {ref[2]:,.0f} | 1.00 |")
    print(f"| jwt, {1000} tokens | {mix} | {conns} | {row[0]:,.0f} | {row[0]/ref[0]:.2f} | {row[1]:.2f} | "
          f"{row[1]/ref[1]:.2f} | {row[2]:,.0f} | {row[2]/ref[2]:.2f} |")
print()
print("| storage | mix | conns | req/s | ×baseline | p99 ms | ×baseline | req/CPU-s | ×baseline |")
print("|---|---|---|---|---|---|---|---|---|")
for (server, mix, conns) in sorted(runs):
    if server in ("baseline", "jwt") or mix == "retiro_auth":
        continue
    base = ("baseline", mix, conns)
    row = [median((server, mix, conns), f) for f in range(3)]
    ref = [median(base, f) for f in range(3)]
    print(f"| {server} | {mix} | {conns} | {row[0]:,.0f} | {row[0]/ref[0]:.2f} | {row[1]:.2f} | "
          f"{row[1]/ref[1]:.2f} | {row[2]:,.0f} | {row[2]/ref[2]:.2f} |")
for (server, mix, conns) in sorted(runs):
    if server == "baseline":
        row = [median((server, mix, conns), f) for f in range(3)]
        print(f"| baseline | {mix} | {conns} | {row[0]:,.0f} | 1.00 | {row[1]:.2f} | 1.00 | {row[2]:,.0f} | 1.00 |")
PY
