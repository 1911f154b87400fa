#!/usr/bin/env python3
"""Simulated scales: send deterministic frames to an ingestor and report what was sent.

    python bench/loadgen.py --endpoint tcp://127.0.0.1:5555 --scales 300 --rate 300 --duration 60

Prints one JSON object (ingestor.simulator.Summary): events, frames, seconds,
events_per_s, and the seq_start/start_ms that define every event sent.
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from ingestor.simulator import Simulator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the ingestor's PULL endpoint")
    p.add_argument("--scales", type=int, default=300)
    p.add_argument("--rate", type=float, default=300.0, help="events/s, all scales together; 0 = as fast as accepted")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to send (0 = until --events)")
    p.add_argument("--events", type=int, default=0, help="events to send in all (0 = until --duration)")
    p.add_argument("--events-per-frame", type=int, default=100)
    p.add_argument("--seq-start", type=int, default=0)
    p.add_argument("--start-ms", type=int, default=None, help="ts of each scale's first event (default: now)")
    p.add_argument("--format", choices=("msgpack", "json"), default="msgpack")
    a = p.parse_args(argv)
    if not a.duration and not a.events:
        p.error("give --duration or --events (or both)")
    sim = Simulator(
        a.endpoint, scales=a.scales, rate=a.rate, events=a.events, duration_s=a.duration,
        events_per_frame=a.events_per_frame, seq_start=a.seq_start, start_ms=a.start_ms, fmt=a.format,
    )
    print(msgspec.json.encode(sim.run()).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
