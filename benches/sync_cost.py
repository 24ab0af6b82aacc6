#!/usr/bin/env python3
"""The cost of one small synced write, appended or written over zeros.

Appending grows the file, so its fdatasync also commits metadata (the new
length and block allocation) through the file system's journal; writing over
zeros that were already synced flushes data blocks only. This is the effect the
journal's room (src/journal/writer.rs) buys. Alternates the two modes, 3,000
syncs of 2 KiB each, and prints wall time and process CPU per sync.

usage: python3 benches/sync_cost.py [DIRECTORY]   (default: a fresh one in .)
"""
import os
import resource
import sys
import tempfile
import time

SYNCS = 3000
RECORD = b"x" * 2048


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(path, mode):
    flags = os.O_CREAT | os.O_WRONLY | (os.O_APPEND if mode == "append" else 0)
    fd = os.open(path, flags, 0o644)
    try:
        if mode == "over zeros":
            zeros = b"\0" * (1 << 20)
            for _ in range(SYNCS * len(RECORD) // len(zeros) + 1):
                os.write(fd, zeros)
            os.fsync(fd)
        cpu, wall = cpu_seconds(), time.monotonic()
        for i in range(SYNCS):
            if mode == "append":
                os.write(fd, RECORD)
            else:
                os.pwrite(fd, RECORD, i * len(RECORD))
            os.fdatasync(fd)
        cpu, wall = cpu_seconds() - cpu, time.monotonic() - wall
    finally:
        os.close(fd)
        os.remove(path)
    print(f"{mode:>10}: {1e6 * wall / SYNCS:6.0f} µs per sync, {1e6 * cpu / SYNCS:5.0f} µs of CPU")


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory(dir=directory or ".") as scratch:
        for mode in ("append", "over zeros", "append", "over zeros"):
            measure(os.path.join(scratch, "segment"), mode)


if __name__ == "__main__":
    main()
