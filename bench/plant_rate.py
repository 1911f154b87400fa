#!/usr/bin/env python3
"""CPU per process at the plant's own rate: 300 scales, 300 events/s, one event per frame, default settings.

    python bench/plant_rate.py --seconds 30 [--events-per-frame 1] [--repeat 1] [-- ingestor run options]

On one throwaway PostgreSQL (default durability), for each repeat: the
service with its defaults, a separate sender at --rate events/s in frames of
--events-per-frame events, for --seconds. Prints, per process (supervisor,
front, writers, PostgreSQL, sender), CPU seconds and the share of one core,
the whole service's share, CPU µs per event, and receive-to-commit p50/p99.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import run_ingestor  # noqa: E402
from throughput import throwaway_server  # noqa: E402

SERVICE = ("supervisor", "front")  # and every writer-N


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=300.0)
    p.add_argument("--events-per-frame", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("extra", nargs="*", help="options for ingestor run (after --)")
    a = p.parse_args()
    workdir, server = throwaway_server("plant")
    try:
        for i in range(a.repeat):
            r = run_ingestor(server, workdir, f"plant_{i}", 0, a.rate, a.seconds, a.extra,
                             events_per_frame=a.events_per_frame)
            procs = r["processes"]
            service = sum(v["cpu_s"] for n, v in procs.items() if n in SERVICE or n.startswith("writer"))
            print(f"run {i + 1}: {r['events']} events in {r['seconds']} s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                  f"average batch {r['average_batch_size']} events")
            for name, v in procs.items():
                print(f"  {name:>12}: {v['cpu_s']:6.2f} CPU-s = {100 * v['cpu_s'] / r['seconds']:5.1f} % of a core")
            print(f"  {'service':>12}: {service:6.2f} CPU-s = {100 * service / r['seconds']:5.1f} % of a core, "
                  f"{1e6 * service / r['events']:.0f} µs per event", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
