#!/usr/bin/env python3
"""What each statement of a writer's transaction costs PostgreSQL, measured apart.

    python bench/statement_cost.py --events 200000

Builds the bench plant's events as ring records, then on a throwaway
PostgreSQL runs the writer's statements over them in batches of 5,000, one
kind of statement per fresh database: the binary COPY alone, the dedup claim
alone (``ingestor.claims``: seq runs per scale), the UPSERT of the latest states alone, and all of
them with the checkpoint in one transaction per batch (what a writer does).
For each it prints wall seconds and the CPU seconds of the PostgreSQL
backend that ran them (psutil on ``pg_backend_pid()``), per 200,000 events.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import msgspec  # noqa: E402
from throughput import SCALES, fresh_db, throwaway_server  # noqa: E402

from ingestor import copy_payload  # noqa: E402
from ingestor.claims import Claims  # noqa: E402
from ingestor.protocol import RecordBuilder, decode_frame  # noqa: E402
from ingestor.simulator import event  # noqa: E402
from ingestor.writer import CHECKPOINT_SQL, UPSERT_SQL, upsert_params  # noqa: E402

BATCH = 5000


def records(n: int):
    now_us = time.time_ns() // 1000
    builder = RecordBuilder()
    for start in range(0, n, 1000):
        batch = [event(i, scales=SCALES, seq_start=0, start_ms=now_us // 1000 - 86_400_000, period_ms=1000.0)
                 for i in range(start, min(n, start + 1000))]
        decode_frame(msgspec.msgpack.encode(batch), builder, now_us)
    return builder.build(time.time_ns())


def run(dsn: str, recs, statements: list[str]) -> tuple[float, float]:
    with psycopg.connect(dsn) as conn:
        copy_payload.register_dumpers(conn)
        backend = psutil.Process(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        conn.commit()
        claims = Claims()
        cpu0 = sum(backend.cpu_times()[:2])
        t0 = time.perf_counter()
        for at in range(0, len(recs), BATCH):
            batch = recs[at : at + BATCH]
            with conn.transaction(), conn.cursor() as cur:
                if "dedup" in statements:
                    claims.claim(cur, batch["scale_id"], batch["seq"])
                if "copy" in statements:
                    with cur.copy(copy_payload.COPY_SQL) as copy:
                        copy.write(copy_payload.build(batch, time.time_ns() // 1000))
                if "upsert" in statements:
                    cur.execute(UPSERT_SQL, upsert_params(batch))
                if "checkpoint" in statements:
                    cur.execute(CHECKPOINT_SQL, (0, "bench", at + len(batch), at + len(batch), 0, 0))
            claims.committed()
        wall = time.perf_counter() - t0
        cpu = sum(backend.cpu_times()[:2]) - cpu0
    return wall, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    a = p.parse_args()
    recs = records(a.events)
    workdir, server = throwaway_server("stmt")
    scale = 200_000 / a.events
    print(f"{a.events:,} events in batches of {BATCH:,}; seconds per 200,000 events\n")
    print("| statements per batch | wall s | PostgreSQL backend CPU s |")
    print("|---|---:|---:|")
    try:
        for name, statements in [
            ("COPY (binary) alone", ["copy"]),
            ("dedup claim alone (seq runs: lock + UPDATE per scale)", ["dedup"]),
            ("UPSERT of the latest state per scale alone", ["upsert"]),
            ("all four: dedup + COPY + UPSERT + checkpoint (a writer's transaction)",
             ["dedup", "copy", "upsert", "checkpoint"]),
        ]:
            dsn = fresh_db(server, "stmt")
            wall, cpu = run(dsn, recs, statements)
            print(f"| {name} | {wall * scale:.2f} | {cpu * scale:.2f} |", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
