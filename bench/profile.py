#!/usr/bin/env python3
"""Where the time goes at full speed: py-spy profiles of the front and a writer.

    python bench/profile.py --writers 2 --seconds 10
    python bench/profile.py --rate 300 --events-per-frame 1 --seconds 20   # the plant's rate

Starts a throwaway PostgreSQL and ``ingestor run``, feeds it at full speed
from a separate sender (bench/loadgen.py; --rate events/s, 0 = as fast as it
can, in frames of --events-per-frame), and while it runs records the
front and writer 0 with py-spy (``pip install py-spy``; needs ptrace, so
root or ``kernel.yama.ptrace_scope=0``). Writes their collapsed stacks
(``bench/results/profile-<role>.txt``, for speedscope or flamegraph.pl) and
prints, per process, the share of its main thread's samples spent under each
of our functions and psycopg's (``Connection.wait`` is waiting for
PostgreSQL).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RATE_HZ = 200  # py-spy's samples per second
# the one installed beside this interpreter (a virtualenv's bin/ is often not on PATH), else PATH's
PY_SPY = str(Path(sys.executable).with_name("py-spy")) if Path(sys.executable).with_name("py-spy").exists() else "py-spy"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import RESULTS  # noqa: E402
from throughput import fresh_db, sender, start_service, throwaway_server  # noqa: E402

from ingestor import stats  # noqa: E402


def record(pid: int, seconds: float, out: Path, fmt: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([PY_SPY, "record", "-p", str(pid), "-d", str(round(seconds)), "-r", str(RATE_HZ), "-f", fmt,
                             "-o", str(out), *flags], stdout=subprocess.DEVNULL)


def summarize(raw: Path, root: str, top: int) -> list[str]:
    """Share of the main loop's samples under each function (inclusive), from py-spy's raw format."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if root not in stack:
            continue  # pool worker threads idling, interpreter start-up
        total += int(n)
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0]
            where = frame.split(" (")[1].split(":")[0] if " (" in frame else ""
            if ("ingestor/" in where or "psycopg" in where or "numpy" in where or "zmq" in where) and name not in seen:
                inclusive[name] += int(n)
                seen.add(name)
    return [f"{100 * v / total:5.1f}%  {k}" for k, v in inclusive.most_common(top)] if total else ["(no samples)"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=0.0, help="events/s; 0: full speed")
    p.add_argument("--events-per-frame", type=int, default=100)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    workdir, server = throwaway_server("profile")
    a.out.mkdir(parents=True, exist_ok=True)
    try:
        dsn = fresh_db(server, "profile")
        proc, bind, stats_ep = start_service(dsn, workdir, "--writers", str(a.writers))
        try:  # the service goes with the run, whatever fails (py-spy missing, no ptrace)
            writers = [w["pid"] for w in stats.query(stats_ep)["writers"]]
            front = next(c.pid for c in psutil.Process(proc.pid).children()
                         if c.pid not in writers and "resource_tracker" not in " ".join(c.cmdline()))
            send = sender(bind, 0, a.rate, 0, a.seconds + 6, a.events_per_frame)
            time.sleep(3)  # past start-up
            targets = {"front": front, "writer-0": writers[0]}
            jobs = []
            for role, pid in targets.items():  # one py-spy per process: two on one pid interfere
                jobs.append(record(pid, a.seconds, a.out / f"profile-{role}.txt", "raw"))
            for job in jobs:
                job.wait()
            s = stats.query(stats_ep)
            send.wait(60)
        finally:
            proc.terminate()
            proc.wait(120)
    finally:
        server.stop()
    print(f"{f'{a.rate:g} events/s' if a.rate else 'full speed'}, {a.writers} writers: "
          f"{s['events_per_s']:,.0f} events/s over the last 10 s, "
          f"batches of {s['average_batch_size']:.0f} in {s['average_batch_ms']:.0f} ms\n")
    for role, root in (("front", "Front.run"), ("writer-0", "Writer.run")):
        print(f"== {role}: share of its main thread's samples (inclusive)")
        print("\n".join(summarize(a.out / f"profile-{role}.txt", root, a.top)))
        print()
    print(f"collapsed stacks (open in https://www.speedscope.app or flamegraph.pl): "
          f"{a.out}/profile-front.txt, {a.out}/profile-writer-0.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
