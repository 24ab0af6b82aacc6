"""Reading what benches/common.sh's `run` appends to its results file:
"server mix conns req/s p99 req-per-server-CPU-second non-2xx" per line.
Imported by the benchmark scripts' summaries (run from the repository root)."""

import collections
import sys

UNIT_MS = (("us", 0.001), ("ms", 1.0), ("s", 1000.0))


def ms(text):
    """A wrk latency ("812.4us", "3.91ms", "1.02s") in milliseconds."""
    for unit, factor in UNIT_MS:
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def runs(path, key):
    """(req/s, p99 ms, req/CPU-s) per round, grouped by key(server, mix,
    conns); exits on a run with non-2xx responses."""
    grouped = collections.defaultdict(list)
    for line in open(path):
        server, mix, conns, rps, p99, per_cpu, errors = line.split()
        if int(errors):
            sys.exit(f"{server} {mix} {conns}: {errors} non-2xx responses")
        grouped[key(server, mix, int(conns))].append((float(rps), ms(p99), float(per_cpu)))
    return grouped
