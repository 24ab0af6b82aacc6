#!/usr/bin/env bash
# Side-by-side speed harness: saldos (memory and journal storage) against the
# bare hyper baseline (examples/hyper_baseline.rs), with wrk on loopback.
# Each server runs pinned to CPU 0 with one worker; wrk runs pinned to CPU 1
# with one thread. Rounds alternate baseline and service so drift on a shared
# machine hits both. Prints medians of req/s, p99 and requests per server
# CPU-second (utime+stime from /proc/PID/stat), and their ratios to baseline.
#
# The observability cells compare the same memory server with metrics on
# (the default) and off (`--metrics-addr ""`), and with tracing on (OTLP to a
# local sink that answers 200, default 5 % sampling) and off, GET /saldo and
# POST /retiro at 256 connections, alternating, and print their ratios.
#
# The auth cell: POST /retiro on memory storage with --auth jwt and 1,000
# distinct valid RS256 tokens in rotation (one per account, minted with
# `saldos dev-token` from a throwaway key) against the same requests to the
# memory server without authentication, at 64 and 256 connections.
#
# With CELLS=all it then runs the PostgreSQL cells (benches/postgres.sh: the
# service on PostgreSQL beside pgbench), when PostgreSQL 15 is installed.
#
# usage: benches/harness.sh [ROUNDS] [SECONDS] [CELLS]
#   defaults: 3 rounds of 10 s, CELLS=all; CELLS=observability, CELLS=auth or
#   CELLS=storage (memory and journal against the baseline) runs only those
#   cells; benches/postgres.sh alone runs only the postgres ones.
# needs: wrk, taskset, python3, openssl, two CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
cells=${3:-all}
cargo build --release --locked --bin saldos --example hyper_baseline
source benches/common.sh

saldos=(target/release/saldos --bind 127.0.0.1 --workers 1 --log-format text)
# Metrics on (the default) on a free port each, or off.
metrics_on=(--metrics-addr 127.0.0.1:0)
start_pinned baseline 5601 5 target/release/examples/hyper_baseline 5601 1
start_pinned memory 5602 5 "${saldos[@]}" "${metrics_on[@]}" --port 5602 --storage memory
start_pinned journal 5603 5 "${saldos[@]}" "${metrics_on[@]}" --port 5603 --storage journal --data-dir "$work/data"
start_pinned metrics-off 5604 5 "${saldos[@]}" --metrics-addr "" --port 5604 --storage memory
# The OTLP sink (on wrk's CPU): reads each export and answers 200.
taskset -c 1 python3 -c '
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()' 5606 &
pids+=($!)
start_pinned traced 5605 5 env OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:5606 "${saldos[@]}" "${metrics_on[@]}" --port 5605 --storage memory
# The auth cell's issuer: a throwaway key, its JWKS in a file, 1,000 tokens.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/key.pem" 2>/dev/null
target/release/saldos dev-token --key "$work/key.pem" --kid bench --jwks >"$work/jwks.json"
for i in $(seq 0 999); do
  target/release/saldos dev-token --key "$work/key.pem" --kid bench --issuer https://bench.invalid \
    --audience saldos-bench --sub "cliente$i" --ttl 2h
done >"$work/tokens.txt"
start_pinned jwt 5607 5 "${saldos[@]}" "${metrics_on[@]}" --port 5607 --storage memory \
  --auth jwt --jwt-issuer https://bench.invalid --jwt-audience saldos-bench --jwks-file "$work/jwks.json"

for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  if [[ $cells == all || $cells == auth ]]; then
    for conns in 64 256; do
      run memory 5602 retiro_auth "$conns"
      run jwt 5607 retiro_auth "$conns"
    done
  fi
  [[ $cells == auth ]] && continue
  if [[ $cells != storage ]]; then
    for mix in saldo retiro; do
      run memory 5602 "$mix" 256
      run metrics-off 5604 "$mix" 256
      run traced 5605 "$mix" 256
    done
  fi
  [[ $cells == observability ]] && continue
  for conns in 64 256; do
    for mix in saldo retiro; do
      run baseline 5601 "$mix" "$conns"
      run memory 5602 "$mix" "$conns"
    done
    run baseline 5601 retiro "$conns"
    run journal 5603 retiro "$conns"
  done
done

python3 - "$work/results" <<'PY'
import statistics, sys
sys.path.insert(0, "benches")
from wrk_results import runs as read_runs

runs = read_runs(sys.argv[1], lambda server, mix, conns: (server, mix, conns))

def median(key, field):
    return statistics.median(run[field] for run in runs[key])

def ratios(on, off, title):
    pairs = [(mix, conns) for (server, mix, conns) in sorted(runs) if server == on and (off, mix, conns) in runs]
    if not pairs:
        return
    print(f"\n{title}\n")
    print(f"| mix | conns | req/s {on} | req/s {off} | × | req/CPU-s {on} | req/CPU-s {off} | × |")
    print("|---|---|---|---|---|---|---|---|")
    for mix, conns in pairs:
        a = [median((on, mix, conns), f) for f in (0, 2)]
        b = [median((off, mix, conns), f) for f in (0, 2)]
        print(f"| {mix} | {conns} | {a[0]:,.0f} | {b[0]:,.0f} | {a[0]/b[0]:.3f} | {a[1]:,.0f} | {b[1]:,.0f} | {a[1]/b[1]:.3f} |")

ratios("memory", "metrics-off", "Metrics on (default) against off (--metrics-addr \"\"), memory storage:")
ratios("traced", "memory", "Tracing on (OTLP, 5 % sampled) against off, metrics on, memory storage:")
ratios("jwt", "memory", "Authentication (--auth jwt, 1,000 RS256 tokens in rotation) against none, memory storage:")
if not any(server == "baseline" for (server, _, _) in runs):
    sys.exit(0)
print()
print("| storage | mix | conns | req/s | ×baseline | p99 ms | ×baseline | req/CPU-s | ×baseline |")
print("|---|---|---|---|---|---|---|---|---|")
for (server, mix, conns) in sorted(runs):
    if server in ("baseline", "metrics-off", "traced", "jwt") or mix == "retiro_auth":
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

if [[ $cells == all ]]; then
  if [[ -x /usr/lib/postgresql/15/bin/postgres ]]; then
    bash benches/postgres.sh "$rounds" "$seconds"
  else
    echo "postgres cells skipped: PostgreSQL 15 is not installed" >&2
  fi
fi
