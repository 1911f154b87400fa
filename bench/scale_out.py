#!/usr/bin/env python3
"""Scale-out figures: 1 against 2 instances on one box, and a central copy's lag at the plant's rate.

    python bench/scale_out.py --events 200000 --central-seconds 60

(1) One PostgreSQL, default durability. (a) COPY from file of the rows;
    (b) one instance (2 writers) fed by one sender; (c) two instances
    (``--instance a`` / ``b``, 2 writers each, data directories of their
    own) fed by one sender each, half the events each, over the same 300
    scales (the worst case: their writers take turns on every scale's
    claim). events/s = events / (first send .. last commit of all).
(2) An edge (``wal_level = logical``) with the ingestor at 300 events/s of
    single-event frames, and a central server subscribed by ``ingestor
    central setup``, both on this box: every 0.5 s, the WAL the central
    server has not confirmed (on the edge) and the age of the newest row
    it holds (on the central server). p50 / p99 / max.
(3) Failover time: a primary and a synchronous standby (tests/replication.py),
    the ingestor on a multi-host DSN at 300 events/s; the primary killed
    (immediate stop) and the standby promoted at once: seconds from the kill
    to the promotion, and to the first commit on the new primary.
    ``--failovers`` times.

Prints Markdown tables; writes ``bench/results/scale-out-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import RESULTS, machine, save_results  # noqa: E402
from throughput import copy_baseline, first_commit_after, fresh_db, sender, start_service, throwaway_server  # noqa: E402

from ingestor import central, stats  # noqa: E402
from tests.replication import Replicated  # noqa: E402


def instances(server, workdir: Path, count: int, events: int) -> dict:
    """``count`` instances on one database, one full-speed sender each; events/s over all."""
    dsn = fresh_db(server, f"so_{count}")
    services = []
    for k in range(count):
        box = workdir / f"box-{count}-{k}"
        box.mkdir()
        services.append(start_service(dsn, box, "--writers", "2", "--instance", f"box-{k}"))
    t0 = time.perf_counter()
    share = events // count
    senders = [sender(bind, share, 0, k * 1_000_000_000) for k, (_, bind, _) in enumerate(services)]
    while True:
        figures = [stats.query(ep) for _, _, ep in services]
        if all(s["persisted"] + s["duplicates"] >= share and s["pending"] == 0 for s in figures):
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    for send in senders:
        send.wait(30)
    for proc, _, _ in services:
        proc.terminate()
        proc.wait(120)
    with psycopg.connect(dsn) as c:
        rows = c.execute("SELECT count(*) FROM weighing_logs").fetchone()[0]
    return {"instances": count, "events": share * count, "rows": rows, "seconds": round(seconds, 2),
            "events_per_s": round(share * count / seconds)}


def central_lag(workdir: Path, seconds: float) -> dict:
    """An edge at 300 events/s with a central subscriber: lag samples every 0.5 s."""
    _, edge = throwaway_server("scale-out-edge", {"wal_level": "logical"})
    _, hub = throwaway_server("scale-out-central")
    try:
        proc, bind, stats_ep = start_service(edge.dsn, workdir, "--schema", "plant_1")
        password = edge.passfile.read_text().strip().rsplit(":", 1)[1]
        central.setup(edge.dsn, hub.dsn, "plant_1",
                      f"host=127.0.0.1 port={edge.port} user=postgres dbname=postgres password={password}")
        send = sender(bind, 0, 300, 0, seconds, events_per_frame=1)
        lag_bytes, age_ms = [], []
        with psycopg.connect(hub.dsn, autocommit=True) as c, psycopg.connect(edge.dsn, autocommit=True) as e:
            time.sleep(2)  # the subscription's first copy and connection
            while send.poll() is None:
                b = central.read_lag(e, "plant_1")
                if b is not None and b.lag_bytes is not None:
                    lag_bytes.append(b.lag_bytes)
                age = c.execute("SELECT extract(epoch FROM now() - max(created_at)) * 1000 "
                                "FROM plant_1.weighing_logs").fetchone()[0]
                if age is not None:
                    age_ms.append(float(age))
                time.sleep(0.5)
        proc.terminate()
        proc.wait(120)
    finally:
        edge.stop()
        hub.stop()

    def q(xs: list, p: float) -> float:
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 1) if xs else float("nan")

    return {"samples": len(lag_bytes), "lag_bytes": {"p50": q(lag_bytes, 0.5), "p99": q(lag_bytes, 0.99),
                                                     "max": max(lag_bytes, default=0)},
            "newest_row_age_ms": {"p50": q(age_ms, 0.5), "p99": q(age_ms, 0.99), "max": round(max(age_ms, default=0))}}


def failover(workdir: Path) -> dict:
    """Kill the primary under 300 events/s, promote the standby: seconds to promotion and to the first commit."""
    pair = Replicated(synchronous=True, settings={})
    try:
        proc, bind, stats_ep = start_service(pair.dsn, workdir)
        send = sender(bind, 0, 300, 0, 60)
        time.sleep(5)
        killed = time.time()
        pair.primary.stop("immediate")
        dead = time.time()  # a commit stamped after this one was made on the new primary
        pair.promote()
        promoted = time.time()
        first = first_commit_after(stats_ep, dead)
        send.kill()
        proc.terminate()
        proc.wait(120)
    finally:
        pair.close()
    return {"promoted_s": round(promoted - killed, 2), "first_commit_s": round(first - killed, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--central-seconds", type=float, default=60.0)
    p.add_argument("--failovers", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()

    date = time.strftime("%Y-%m-%d")
    workdir = Path(tempfile.mkdtemp(prefix="ingestor-scale-out-bench-"))
    results: dict = {"date": date, "events": a.events}
    try:
        _, server = throwaway_server("scale-out")
        try:
            results["machine"] = machine(server)
            dsn = fresh_db(server, "so_copy")
            results["copy_events_per_s"] = round(a.events / copy_baseline(server, dsn, a.events))
            print(f"(a) COPY {results['copy_events_per_s']:,} events/s", flush=True)
            results["one"] = instances(server, workdir, 1, a.events)
            print(f"(b) 1 instance {results['one']['events_per_s']:,} events/s", flush=True)
            results["two"] = instances(server, workdir, 2, a.events)
            print(f"(c) 2 instances {results['two']['events_per_s']:,} events/s", flush=True)
        finally:
            server.stop()
        results["central"] = central_lag(workdir, a.central_seconds)
        results["failovers"] = []
        for k in range(a.failovers):
            box = workdir / f"failover-{k}"
            box.mkdir()
            results["failovers"].append(failover(box))
            print(f"(3) failover {k + 1}: {results['failovers'][-1]}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    copy = results["copy_events_per_s"]
    c = results["central"]
    lines = [f"{results['machine']}; {a.events:,} events; {date}", "",
             "| run | events/s | × COPY | rows |", "|---|---:|---:|---:|",
             f"| (a) COPY from file | {copy:,} | 1.00 | |"]
    for label, key in (("(b) 1 instance, 2 writers", "one"), ("(c) 2 instances, 2 writers each, same scales", "two")):
        r = results[key]
        lines.append(f"| {label} | {r['events_per_s']:,} | {r['events_per_s'] / copy:.2f} | {r['rows']:,} |")
    lines += ["", f"Central copy at 300 events/s, {a.central_seconds:.0f} s, {c['samples']} samples:", "",
              "| | p50 | p99 | max |", "|---|---:|---:|---:|",
              f"| WAL not confirmed, bytes | {c['lag_bytes']['p50']:,} | {c['lag_bytes']['p99']:,} | {c['lag_bytes']['max']:,} |",
              f"| newest central row's age, ms | {c['newest_row_age_ms']['p50']} | {c['newest_row_age_ms']['p99']} "
              f"| {c['newest_row_age_ms']['max']} |"]
    lines += ["", "Failover at 300 events/s (synchronous standby), seconds after the primary's kill:", "",
              "| run | standby promoted | first commit on it |", "|---|---:|---:|"]
    lines += [f"| {k + 1} | {f['promoted_s']} | {f['first_commit_s']} |" for k, f in enumerate(results["failovers"])]
    save_results(a.out, f"scale-out-{date}", results, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
