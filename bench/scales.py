#!/usr/bin/env python3
"""Cost as the plant grows: the same events from 300, 3,000 and 30,000 scales, at full speed, interleaved.

    python bench/scales.py --events 300000 --rounds 3 [--scales 300 3000 30000] [-- ingestor run options]
    python bench/scales.py --scales 30000 --fillfactors 100 50 --rounds 2   # the latest states' fillfactor, A/B

On one throwaway PostgreSQL (default durability), per round and scale
count: a fresh database, the service with its defaults (2 writers, alibi
on), and --events events of that many scales in frames of 100 from a
separate sender (bench/loadgen.py), as fast as the service takes them.
Prints, per run: events/s (first send to last commit) and its ratio to the
300-scale run of the same round, PostgreSQL CPU µs per event, rows written
per event (pg_stat_database: tuples inserted + updated + deleted in the
run's database, so every claim, latest-state and chain-head row counts) and
WAL bytes per event (``pg_current_wal_lsn()`` before and after, the
cluster's, with nothing else writing), and how many of the latest-state
updates were HOT (no index entry, the new version on the same page) and
that table's size. Writes
``bench/results/scales-<date>.json`` and ``.md``.

Per distinct scale in a batch a writer touches a claim row, a latest-state
row and (alibi on) a chain head: with many scales a batch holds few events
per scale, and those rows approach one per event.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compare import RESULTS, Sampler, machine, postgres_procs, save_results, service_procs  # noqa: E402
from throughput import fresh_db, sender, start_service, throwaway_server  # noqa: E402

from ingestor import stats  # noqa: E402

LATEST_STATES = ("SELECT n_tup_hot_upd, n_tup_upd, pg_relation_size(relid) FROM pg_stat_user_tables "
                 "WHERE relname = 'scale_current_states'")
ROW_COUNTS = "SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = current_database()"


def wal_lsn(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        return int(c.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def run(server, workdir: Path, name: str, scales: int, events: int, extra: list[str],
        fillfactor: int | None = None) -> dict:
    dsn = fresh_db(server, name)
    if fillfactor is not None:  # instead of the schema's (sql/013_latest_states_fillfactor.sql)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"ALTER TABLE scale_current_states SET (fillfactor = {int(fillfactor)})")
    proc, bind, stats_ep = start_service(dsn, workdir, *extra)
    writer_pids = [w["pid"] for w in stats.query(stats_ep)["writers"]]
    with psycopg.connect(dsn) as c:
        rows_before = int(c.execute(ROW_COUNTS).fetchone()[0])
    wal_before = wal_lsn(dsn)
    sampler = Sampler()
    sampler.watch(postgres_procs(server))
    sampler.watch(service_procs(proc, lambda: writer_pids))
    with sampler:
        t0 = time.perf_counter()
        send = sender(bind, events, 0, 0, 0, 100, scales)
        while True:
            s = stats.query(stats_ep)
            if s["persisted"] + s["duplicates"] + s["failed"] >= events and s["pending"] == 0:
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
    wal = wal_lsn(dsn) - wal_before
    send.wait(30)
    proc.terminate()
    proc.wait(120)
    time.sleep(1.0)  # the backends' statistics reach pg_stat_database when they exit
    with psycopg.connect(dsn) as c:
        rows = int(c.execute(ROW_COUNTS).fetchone()[0]) - rows_before
        hot, updates, size = c.execute(LATEST_STATES).fetchone()
    procs = sampler.figures()
    return {"scales": scales, "fillfactor": fillfactor, "latest_states_hot_share": round(hot / max(updates, 1), 3),
            "latest_states_mb": round(size / 2**20, 1),
            "events": events, "seconds": round(seconds, 2), "events_per_s": round(events / seconds),
            "persisted": s["persisted"], "postgres_us_per_event": round(1e6 * procs["postgres"]["cpu_s"] / events, 2),
            "rows_per_event": round(rows / events, 3), "wal_bytes_per_event": round(wal / events, 1),
            "average_batch_size": s["average_batch_size"], "processes": procs}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--scales", type=int, nargs="+", default=[300, 3000, 30000])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fillfactors", type=int, nargs="*", default=[None],
                   help="scale_current_states' fillfactor, each in turn per scale count (default: the schema's)")
    p.add_argument("--label", default="")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("extra", nargs="*", help="options for ingestor run (after --)")
    a = p.parse_args()
    workdir, server = throwaway_server("scales")
    date = time.strftime("%Y-%m-%d")
    results: dict = {"machine": machine(server), "date": date, "events": a.events, "runs": []}
    try:
        for i in range(a.rounds):
            order = a.scales if i % 2 == 0 else a.scales[::-1]  # interleaved: neither end always runs first
            for n in order:
                for ff in a.fillfactors if i % 2 == 0 else a.fillfactors[::-1]:
                    r = run(server, workdir, f"scales_{i}_{n}_{ff}", n, a.events, a.extra, ff)
                    r["round"] = i + 1
                    results["runs"].append(r)
                    print(json.dumps({k: v for k, v in r.items() if k != "processes"}), flush=True)
    finally:
        server.stop()
    lines = [f"{results['machine']}; {date}; {a.events:,} events per run, frames of 100, full speed, "
             f"defaults{' ' + ' '.join(a.extra) if a.extra else ''}", "",
             "| round | scales | latest states' fillfactor | events/s | × 300 scales | PostgreSQL µs per event "
             "| rows written per event | WAL bytes per event | HOT share of latest-state updates | that table, MB |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        base = next((x for x in results["runs"] if x["round"] == r["round"] and x["scales"] == 300
                     and x["fillfactor"] == r["fillfactor"]), r)
        lines.append(f"| {r['round']} | {r['scales']:,} | {r['fillfactor'] or 'schema'} | {r['events_per_s']:,} "
                     f"| {r['events_per_s'] / base['events_per_s']:.2f} | {r['postgres_us_per_event']} "
                     f"| {r['rows_per_event']} | {r['wal_bytes_per_event']} | {r['latest_states_hot_share']} "
                     f"| {r['latest_states_mb']} |")
    save_results(a.out, f"scales-{date}{a.label}", results, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
