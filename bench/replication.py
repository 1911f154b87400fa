#!/usr/bin/env python3
"""What a streaming standby costs: no standby, an asynchronous one, a synchronous one, in one run.

    python bench/replication.py --events 200000

For each setup a primary with default durability (fsync, synchronous_commit
on), and for the last two a standby made from it with ``pg_basebackup``
(tests/replication.py), all on this machine; then, as in bench/compare.py:

(a) ``COPY weighing_logs FROM 'file'`` of the rows: the limit, per setup;
(c) the ingestor with 2 writers at full speed (a separate sender process);
(d) the ingestor with defaults at 300 events/s for ``--paced-seconds``:
    receive-to-commit p50 and p99.

With ``--patroni`` the pair is a Patroni cluster with etcd (tests/fix_patroni.py;
``synchronous_mode`` false and true, fsync and full_page_writes on), the
ingestor on the multi-host DSN with ``target_session_attrs=read-write``, as
docs/operations.md "Running with Patroni" configures it:

    python bench/replication.py --patroni --setups none async sync

A synchronous standby makes every COMMIT wait for the standby's flush too;
on one box that is a local round trip and a second fsync, so the figures
are a floor for a standby across a network. Prints a Markdown table and
writes ``bench/results/replication-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import RESULTS, Sampler, machine, postgres_procs, run_ingestor, save_results  # noqa: E402
from throughput import copy_baseline, fresh_db, throwaway_server  # noqa: E402

from tests.replication import Replicated  # noqa: E402

SETUPS = ("none", "async", "sync")
DURABLE = {"fsync": "on", "full_page_writes": "on"}


class PatroniLeader:
    """A Patroni cluster seen as the one server the measurements use: its DSN (multi-host, the leader
    chosen by target_session_attrs), and the leader's directories (the COPY file, the postmaster pid)."""

    def __init__(self, synchronous: bool) -> None:
        from tests.fix_patroni import PatroniCluster

        self.cluster = PatroniCluster(synchronous=synchronous, parameters=DURABLE)
        leader = self.cluster.wait_leader()
        self.dsn = self.cluster.dsn
        self.data_dir, self.pgdata = leader.dir, leader.dir / "pg"

    def close(self) -> None:
        self.cluster.close()


def measure(server, workdir: Path, setup: str, events: int, paced_s: float) -> dict:
    dsn = fresh_db(server, f"rep_{setup}_copy")
    sampler = Sampler()
    sampler.watch(postgres_procs(server))
    with sampler:
        seconds = copy_baseline(server, dsn, events)
    out = {"copy": {"events_per_s": round(events / seconds), "processes": sampler.figures()}}
    print(f"{setup}: (a) COPY {out['copy']['events_per_s']:,} events/s", flush=True)
    out["full"] = run_ingestor(server, workdir, f"rep_{setup}_full", events, 0, 0, ["--writers", "2"])
    print(f"{setup}: (c) ingestor, 2 writers {out['full']['events_per_s']:,} events/s", flush=True)
    out["paced"] = run_ingestor(server, workdir, f"rep_{setup}_paced", 0, 300, paced_s, [])
    print(f"{setup}: (d) 300 events/s p50 {out['paced']['p50_ms']} ms, p99 {out['paced']['p99_ms']} ms", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--paced-seconds", type=float, default=30.0)
    p.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--patroni", action="store_true", help="the standby set up by Patroni (synchronous_mode)")
    a = p.parse_args()

    date = time.strftime("%Y-%m-%d")
    results: dict = {"date": date, "events": a.events, "setups": {}}
    workdir = Path(tempfile.mkdtemp(prefix="ingestor-replication-bench-"))
    try:
        for setup in a.setups:
            if setup == "none":
                _, server = throwaway_server("replication-none", DURABLE if a.patroni else None)
                close = server.stop
            elif a.patroni:
                server = PatroniLeader(synchronous=setup == "sync")
                close = server.close
            else:
                pair = Replicated(synchronous=setup == "sync", settings={})
                server, close = pair.primary, pair.close
            try:
                results.setdefault("machine", machine(server))
                results["setups"][setup] = measure(server, workdir, setup, a.events, a.paced_seconds)
            finally:
                close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    lines = [f"{results['machine']}; {a.events:,} events; {date}", "",
             "| standby | (a) COPY events/s | (c) ingestor, 2 writers, events/s | × COPY | × no standby's | "
             "(d) 300 events/s p50 / p99 ms | primary PostgreSQL CPU s in (c) |",
             "|---|---:|---:|---:|---:|---|---:|"]
    base = results["setups"].get("none", {}).get("full", {}).get("events_per_s")
    for setup, r in results["setups"].items():
        full, copy, paced = r["full"], r["copy"]["events_per_s"], r["paced"]
        pg_cpu = round(sum(v["cpu_s"] for n, v in full["processes"].items() if n.startswith("postgres")), 2)
        vs_base = f"{full['events_per_s'] / base:.2f}" if base else ""
        lines.append(f"| {setup} | {copy:,} | {full['events_per_s']:,} | {full['events_per_s'] / copy:.2f} | {vs_base} "
                     f"| {paced['p50_ms']} / {paced['p99_ms']} | {pg_cpu} |")
    results["patroni"] = a.patroni
    save_results(a.out, f"replication{'-patroni' if a.patroni else ''}-{date}", results, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
