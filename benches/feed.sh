#!/usr/bin/env bash
# Reading and following movements and events (SPEC section 9), with the
# harness's method: each server pinned to CPU 0 with one worker, wrk (and the
# event consumer) on CPU 1, alternating rounds, medians, requests per server
# CPU-second beside req/s.
#
# What recording them costs a debit is benches/recording.sh.
#
# 1. Reading: GET /movimientos/{usuario} against GET /saldo/{usuario} at 64
#    connections on one journal server whose 10,000 accounts each have 20 movements.
# 2. Following: one Server-Sent Events consumer of the journal while wrk
#    debits it at 256 connections: events per second delivered against
#    debits per second acknowledged.
#
# usage: benches/feed.sh [ROUNDS] [SECONDS]   (defaults: 3 rounds of 10 s)
# needs: wrk, taskset, python3, two CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
cargo build --release --locked --bin saldos
source benches/common.sh

flags=(--bind 127.0.0.1 --workers 1 --log-format text --metrics-addr "")
start_pinned journal 5612 5 target/release/saldos "${flags[@]}" --port 5612 --storage journal --data-dir "$work/journal"
start_pinned history 5615 5 target/release/saldos "${flags[@]}" --port 5615 --storage journal --data-dir "$work/history"

# 20 movements for each of the 10,000 accounts the read mixes use.
WRK_ACCOUNTS=10000 taskset -c 1 wrk -t1 -c64 -d120s -s benches/wrk/fill.lua http://127.0.0.1:5615 >/dev/null

# follow PORT SECONDS: counts the events a stream delivers in SECONDS.
follow() {
  taskset -c 1 python3 - "$1" "$2" <<'PY'
import http.client, json, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
# The current end of the feed: a probe debit's id (its newest movement).
connection = http.client.HTTPConnection("127.0.0.1", port)
connection.request("POST", "/retiro", body='{"usuario":"sonda","monto":1}',
                   headers={"Content-Type": "application/json"})
connection.getresponse().read()
connection.request("GET", "/movimientos/sonda?limite=1")
ultimo = json.loads(connection.getresponse().read())["movimientos"][0]["id"]
connection.close()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /eventos HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n"
          b"Last-Event-ID: " + ultimo.encode() + b"\r\n\r\n")
s.settimeout(0.2)
count, deadline, tail = 0, time.monotonic() + seconds, b""
while time.monotonic() < deadline:
    try:
        chunk = s.recv(1 << 20)
    except socket.timeout:
        continue
    if not chunk:
        break
    # A marker split across two reads is counted once: the kept tail is one
    # byte shorter than the marker, so no whole marker is counted twice.
    data = tail + chunk
    count += data.count(b"event: debito")
    tail = data[-len(b"event: debito") + 1:]
print(count)
PY
}

for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  run history 5615 saldo 64
  run history 5615 movimientos 64
  # The consumer reads for the whole wrk run (it starts first and stops last).
  follow 5612 "$((seconds + 1))" >"$work/followed" &
  follower=$!
  sleep 0.5
  run journal 5612 retiro 256
  wait "$follower"
  echo "followed $(cat "$work/followed") $seconds $(tail -1 "$work/results" | awk '{print $4}')" >>"$work/followers"
done

python3 - "$work/results" "$work/followers" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    server, mix, conns, rps, p99, per_cpu, errors = line.split()
    if int(errors):
        sys.exit(f"{server} {mix} {conns}: {errors} non-2xx responses")
    runs[(server, mix, int(conns))].append((float(rps), float(per_cpu)))
med = lambda key, f: statistics.median(r[f] for r in runs[key])
s, m = ("history", "saldo", 64), ("history", "movimientos", 64)
print("\nReading: GET /movimientos (20 movements a page) against GET /saldo, journal, 64 connections\n")
print("| route | req/s | req/CPU-s |\n|---|---|---|")
print(f"| /saldo | {med(s,0):,.0f} | {med(s,1):,.0f} |")
print(f"| /movimientos | {med(m,0):,.0f} ({med(m,0)/med(s,0):.3f}×) | {med(m,1):,.0f} ({med(m,1)/med(s,1):.3f}×) |")
rates = []
for line in open(sys.argv[2]):
    _, events, seconds, rps = line.split()
    rates.append((int(events) / float(seconds), float(rps)))
print("\nFollowing: one SSE consumer while the journal is debited at 256 connections\n")
print("| round | events/s delivered | debits/s acknowledged | × |\n|---|---|---|---|")
for i, (events, debits) in enumerate(rates, 1):
    print(f"| {i} | {events:,.0f} | {debits:,.0f} | {events/debits:.3f} |")
PY
