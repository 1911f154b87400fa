#!/usr/bin/env python3
"""What the history costs on disk, in PostgreSQL and in the Parquet archive, and which indexes pay.

    python bench/archive_size.py --events 10000000 --index-events 2000000

On a throwaway PostgreSQL (default durability), in one run:

1. **Bytes per event.** ``--events`` events of the bench plant (300 scales,
   bench/loadgen.py at full speed) through ``ingestor run`` (2 writers) into
   one day partition: the partition's heap, TOAST and each index, the dedup
   claims, the latest states, and the WAL written (``pg_current_wal_lsn``
   before and after), all divided by the events.
2. **The archive.** That partition archived to a local directory
   (ingestor/archive.py, as the lifecycle does): Parquet bytes per event,
   seconds to archive, and the verifier's read-back speed alone.
3. **Index choices** on the same rows: the per-scale history query
   (one scale, one day: ``WHERE scale_id = $1 AND measured_at >= $2 AND
   measured_at < $3``, 20 scales, median of warm runs) with the B-tree
   ``(scale_id, measured_at)`` the schema has, with none, and with BRIN
   indexes on ``measured_at``/``created_at`` instead; each index's size.
4. **Writers' cost of each index set**: ``--index-events`` events into a
   fresh database with (a) the schema's B-tree, (b) the B-tree plus a BRIN on
   ``created_at``, (c) only BRIN indexes; events/s beside a raw ``COPY`` of
   the same rows in the same run (the ratio is what compares across runs).

Writes bench/results/archive-size-DATE.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import machine, save_results  # noqa: E402
from throughput import SCALES, copy_baseline, fresh_db, sender, start_service, throwaway_server, wait_persisted  # noqa: E402

from ingestor import archive  # noqa: E402

QUERY = ("SELECT id, seq, measured_at, data_1 FROM weighing_logs "
         "WHERE scale_id = %s AND measured_at >= %s AND measured_at < %s ORDER BY measured_at")
BRIN = ("CREATE INDEX weighing_logs_created_brin ON weighing_logs USING brin (created_at); "
        "CREATE INDEX weighing_logs_measured_brin ON weighing_logs USING brin (measured_at)")
INDEX_SETS = {
    "B-tree (scale_id, measured_at): the schema": "",
    "B-tree + BRIN (created_at)": "CREATE INDEX weighing_logs_created_brin ON weighing_logs USING brin (created_at)",
    "BRIN (created_at), BRIN (measured_at), no B-tree": "DROP INDEX weighing_logs_scale_measured; " + BRIN,
}


def ingest(server, workdir: Path, name: str, events: int, before_sql: str = "") -> float:
    """``events`` events of the bench plant through the service into a fresh database; events/s."""
    dsn = fresh_db(server, name)
    if before_sql:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(before_sql)
    return ingest_into(workdir, dsn, events)


def sizes(conn: psycopg.Connection, partition: str) -> dict[str, int]:
    """Bytes of the partition's heap, TOAST, each index, and the ingestor's other tables."""
    out = {"heap": conn.execute("SELECT pg_relation_size(%s::regclass)", (partition,)).fetchone()[0],
           "toast": conn.execute("SELECT coalesce(pg_total_relation_size(reltoastrelid), 0) FROM pg_class "
                                 "WHERE oid = %s::regclass", (partition,)).fetchone()[0]}
    for name, size in conn.execute(
            "SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid) FROM pg_index i "
            "WHERE i.indrelid = %s::regclass", (partition,)):
        out[f"index {name}"] = size
    for table in ("ingestor_claims", "ingestor_claim_runs", "scale_current_states", "ingestor_checkpoints"):
        out[table] = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (table,)).fetchone()[0]
    return out


def query_ms(conn: psycopg.Connection, runs: int = 3) -> float:
    """Median ms of the per-scale history query over the whole measured span (with 10 million events: 9 h, a
    scale's 33,000 rows), over 20 scales, warm (best of ``runs`` each)."""
    lo, hi = conn.execute("SELECT min(measured_at), max(measured_at) + interval '1 s' FROM weighing_logs").fetchone()
    times = []
    for scale in random.Random(7).sample(range(1, SCALES + 1), 20):
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            conn.execute(QUERY, (scale, lo, hi)).fetchall()
            best = min(best, time.perf_counter() - t0)
        times.append(best * 1000)
    return round(statistics.median(times), 2)


def archive_query_ms(path: Path, runs: int = 3) -> float:
    """The per-scale query of :func:`query_ms` on the Parquet archive with DuckDB (one thread), median ms."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 1")
    times = []
    for scale in random.Random(7).sample(range(1, SCALES + 1), 20):
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            con.execute("SELECT id, seq, measured_at, data_1 FROM read_parquet(?) WHERE scale_id = ? "
                        "ORDER BY measured_at", (str(path), scale)).fetchall()
            best = min(best, time.perf_counter() - t0)
        times.append(best * 1000)
    con.close()
    return round(statistics.median(times), 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--index-events", type=int, default=2_000_000)
    p.add_argument("--tag", default="run1", help="suffix of the result files")
    a = p.parse_args()
    workdir, server = throwaway_server("archive-size")
    results: dict = {"machine": machine(server), "date": time.strftime("%Y-%m-%d"), "events": a.events}
    lines = []
    try:
        # 1. bytes per event
        dsn = fresh_db(server, "bench_size")
        with psycopg.connect(dsn, autocommit=True) as c:
            wal0 = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        rate = ingest_into(workdir, dsn, a.events)
        today = dt.datetime.now(dt.UTC).date()
        partition = f"weighing_logs_p{today:%Y%m%d}"
        with psycopg.connect(dsn, autocommit=True) as c:
            wal = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::bigint", (wal0,)).fetchone()[0]
            c.execute("VACUUM (ANALYZE) weighing_logs")
            found = sizes(c, partition)
            rows = c.execute(f"SELECT count(*) FROM {partition}").fetchone()[0]
            results["rows"] = rows
            results["ingest_events_per_s"] = round(rate)
            results["bytes"] = {**found, "wal": wal}
            # 2. the archive
            with tempfile.TemporaryDirectory(dir=workdir) as out:
                target = archive.Target(out)
                done = archive.archive_partition(c, target, partition, today)
                t0 = time.perf_counter()
                archive.verify(target, archive.file_name(partition))
                verify_s = time.perf_counter() - t0
                parquet_query_ms = archive_query_ms(Path(out) / archive.file_name(partition))
            results["parquet_bytes"] = done.file_bytes
            results["archive_seconds"] = done.seconds
            results["verify_rows_per_s"] = round(rows / verify_s)
            results["parquet_query_ms"] = parquet_query_ms
            # 3. index choices for the per-scale query
            results["query_ms"] = {"B-tree (scale_id, measured_at)": query_ms(c)}
            c.execute(BRIN)
            c.execute("DROP INDEX weighing_logs_scale_measured")
            c.execute("ANALYZE weighing_logs")
            results["query_ms"]["BRIN (measured_at), no B-tree"] = query_ms(c)
            results["brin_bytes"] = {k: v for k, v in sizes(c, partition).items()
                                     if k.startswith("index") and k not in found}
        # 4. what each index set costs the writers, beside COPY of the same rows
        copy_rate = a.index_events / copy_baseline(server, fresh_db(server, "bench_copy"), a.index_events)
        results["index_sets"] = {"copy_events_per_s": round(copy_rate), "events": a.index_events}
        for k, (label, sql_text) in enumerate(INDEX_SETS.items()):
            r = ingest(server, workdir, f"bench_index_{k}", a.index_events, sql_text)
            results["index_sets"][label] = {"events_per_s": round(r), "ratio_to_copy": round(r / copy_rate, 3)}
    finally:
        server.stop()
    lines += table(results)
    save_results(ROOT / "bench" / "results", f"archive-size-{results['date']}-{a.tag}", results, lines)
    return 0


def ingest_into(workdir: Path, dsn: str, events: int) -> float:
    """Send ``events`` events at full speed through a service (2 writers) writing ``dsn``; events/s."""
    proc, bind, stats_ep = start_service(dsn, workdir, "--writers", "2")
    t0 = time.perf_counter()
    send = sender(bind, events, 0, 0)
    wait_persisted(stats_ep, events, timeout_s=7200)
    seconds = time.perf_counter() - t0
    send.wait(60)
    proc.terminate()
    proc.wait(300)
    return events / seconds


def table(r: dict) -> list[str]:
    n = r["rows"]
    out = [f"{r['machine']}, {r['date']}: {n:,} events of {SCALES} scales in one day partition", "",
           "| where | bytes | bytes per event |", "|---|---:|---:|"]
    total = 0
    for name, size in r["bytes"].items():
        out.append(f"| {name} | {size:,} | {size / n:.1f} |")
        total += size if name != "wal" else 0
    out.append(f"| **PostgreSQL on disk (without WAL)** | {total:,} | {total / n:.1f} |")
    out.append(f"| **Parquet archive (zstd {archive.ZSTD_LEVEL})** | {r['parquet_bytes']:,} | {r['parquet_bytes'] / n:.1f} |")
    out += ["", f"Archive: {r['archive_seconds']} s for the partition ({n / r['archive_seconds']:,.0f} rows/s, "
                f"read, write, verify); verifier alone {r['verify_rows_per_s']:,} rows/s. "
                f"Ingest: {r['ingest_events_per_s']:,} events/s.", "",
            "| per-scale history query (one day) | median ms | index bytes per event |", "|---|---:|---:|"]
    btree = next(v for k, v in r["bytes"].items() if "scale_id_measured_at" in k)
    brin = sum(r["brin_bytes"].values())
    for label, ms in r["query_ms"].items():
        out.append(f"| {label} | {ms} | {(btree if 'B-tree (' in label else brin) / n:.2f} |")
    if "parquet_query_ms" in r:
        out.append(f"| the Parquet archive, DuckDB (1 thread) | {r['parquet_query_ms']} | 0 |")
    s = r["index_sets"]
    indexed = r['index_sets'].get('events', 2_000_000)
    out += ["", f"| index set ({SCALES} scales, 2 writers, {indexed:,} events) | events/s | ratio to COPY |", "|---|---:|---:|",
            f"| raw COPY of the same rows (schema's index) | {s['copy_events_per_s']:,} | 1.00 |"]
    for label, v in s.items():
        if label not in ("copy_events_per_s", "events"):
            out.append(f"| {label} | {v['events_per_s']:,} | {v['ratio_to_copy']:.2f} |")
    return out


if __name__ == "__main__":
    sys.exit(main())
