#!/usr/bin/env python3
"""Disk and WAL of the dedup state per event: seq runs (ingestor/claims.py) against one key per event.

    python bench/dedup_size.py --events 10000000

On a throwaway PostgreSQL, claims the keys of the bench plant (300 scales,
each counting seq +1, events round-robin over the scales) in batches of
5,000, one transaction each, the way a writer does:

- "in order": every event arrives;
- "0.1 % lost": one event in a thousand never arrives (a gap, so a run behind
  the head per gap);
- "one key per event": the layout before migration 006 (``ingestor_seen``,
  INSERT … ON CONFLICT DO NOTHING), for comparison.

Prints bytes per event of the tables with their indexes (as left by the run
and after VACUUM) and of the WAL the claims wrote.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import fresh_db, throwaway_server  # noqa: E402

from ingestor import copy_payload  # noqa: E402
from ingestor.claims import Claims  # noqa: E402
from ingestor.copy_payload import INT4_ARRAY_OID, INT8_ARRAY_OID, BinaryArray  # noqa: E402

BATCH = 5000
SCALES = 300
OLD_TABLE = "CREATE TABLE ingestor_seen (scale_id integer NOT NULL, seq bigint NOT NULL, PRIMARY KEY (scale_id, seq))"
OLD_CLAIM = "INSERT INTO ingestor_seen SELECT * FROM unnest(%b::int4[], %b::int8[]) ON CONFLICT DO NOTHING"


def batches(events: int, lost: float, seed: int = 12):
    rng = np.random.default_rng(seed)
    for start in range(0, events, BATCH):
        i = np.arange(start, min(events, start + BATCH), dtype=np.int64)
        if lost:
            i = i[rng.random(len(i)) >= lost]
        yield (i % SCALES).astype(np.int32), i // SCALES


def run(dsn: str, events: int, lost: float, layout: str) -> dict:
    tables = ("ingestor_claims", "ingestor_claim_runs") if layout == "runs" else ("ingestor_seen",)
    with psycopg.connect(dsn) as conn:
        copy_payload.register_dumpers(conn)
        if layout == "keys":
            conn.execute(OLD_TABLE)
            conn.commit()
        claims, stored = Claims(), 0
        wal0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        conn.commit()
        t0 = time.perf_counter()
        for scale_ids, seqs in batches(events, lost):
            with conn.transaction(), conn.cursor() as cur:
                if layout == "runs":
                    claims.claim(cur, scale_ids, seqs)
                else:
                    cur.execute(OLD_CLAIM, (BinaryArray(scale_ids, INT4_ARRAY_OID), BinaryArray(seqs, INT8_ARRAY_OID)))
            claims.committed()
            stored += len(seqs)
        seconds = time.perf_counter() - t0
        wal = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (wal0,)).fetchone()[0]
        size_sql = "SELECT sum(pg_total_relation_size(t::regclass)) FROM unnest(%s::text[]) t"
        size = conn.execute(size_sql, (list(tables),)).fetchone()[0]
        rows = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)
        conn.commit()
        conn.autocommit = True
        for t in tables:
            conn.execute(f"VACUUM {t}")
        vacuumed = conn.execute(size_sql, (list(tables),)).fetchone()[0]
    return {"events": stored, "rows": rows, "seconds": seconds, "bytes": int(size), "vacuumed": int(vacuumed),
            "wal": int(wal)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000)
    a = p.parse_args()
    _, server = throwaway_server("dedup")
    print(f"{a.events:,} events, {SCALES} scales, batches of {BATCH:,}\n")
    print("| dedup state | rows | claim s | bytes/event as left | after VACUUM | WAL bytes/event |")
    print("|---|---:|---:|---:|---:|---:|")
    try:
        for name, lost, layout in [("seq runs, in order", 0.0, "runs"), ("seq runs, 0.1 % lost", 0.001, "runs"),
                                   ("one key per event (before 006)", 0.0, "keys")]:
            r = run(fresh_db(server, "dedup"), a.events, lost, layout)
            n = r["events"]
            print(f"| {name} | {r['rows']:,} | {r['seconds']:.1f} | {r['bytes'] / n:.3f} | {r['vacuumed'] / n:.3f} | "
                  f"{r['wal'] / n:.2f} |", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
