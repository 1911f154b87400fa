#!/usr/bin/env python3
"""Failover time under Patroni at the plant's rate: the leader killed, seconds to the first commit on the new one.

    python bench/patroni_failover.py --runs 5

Each run: a fresh etcd and two PostgreSQL 15 nodes under Patroni (tests/fix_patroni.py:
``synchronous_mode`` on, ttl 10 s, loop_wait 1 s, retry_timeout 4 s), the ingestor on the
multi-host DSN at 300 events/s (300 scales, bench/loadgen.py), 10 s of steady flow, then the
leader's Patroni and PostgreSQL SIGKILLed together. Measured: kill → the other node reported
leader by its REST API, and kill → the first commit stamped after the kill (stats'
``last_persisted_at``). Everything shares this box's 2 cores.

Prints a Markdown table (each run, then the median); writes
``bench/results/patroni-failover-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import RESULTS, save_results  # noqa: E402
from throughput import first_commit_after, sender, start_service  # noqa: E402

from ingestor import stats  # noqa: E402
from tests.fix_patroni import LOOP_WAIT_S, RETRY_TIMEOUT_S, TTL_S, PatroniCluster  # noqa: E402


def one_failover(workdir: Path) -> dict:
    cluster = PatroniCluster(synchronous=True)
    try:
        proc, bind, stats_ep = start_service(cluster.dsn, workdir)
        send = sender(bind, 0, 300, 0, 60)
        time.sleep(10)
        old, _ = cluster.kill_leader()
        killed = time.time()
        cluster.wait_leader(other_than=old, timeout_s=60)
        leader = time.time()
        first = first_commit_after(stats_ep, killed)
        lost = stats.query(stats_ep)["lost_after_commit"]
        send.kill()
        proc.terminate()
        proc.wait(120)
    finally:
        cluster.close()
    return {"leader_s": round(leader - killed, 2), "first_commit_s": round(first - killed, 2), "lost_after_commit": lost}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    runs = []
    for i in range(a.runs):
        with tempfile.TemporaryDirectory(prefix="ingestor-bench-patroni-") as d:
            runs.append(one_failover(Path(d)))
        print(f"run {i + 1}: {runs[-1]}", flush=True)
    median = {k: statistics.median(r[k] for r in runs) for k in ("leader_s", "first_commit_s")}
    results = {"date": time.strftime("%Y-%m-%d"), "ttl_s": TTL_S, "loop_wait_s": LOOP_WAIT_S,
               "retry_timeout_s": RETRY_TIMEOUT_S, "synchronous_mode": True, "rate": 300, "runs": runs,
               "median": median}
    lines = [f"Patroni failover, synchronous_mode, ttl {TTL_S} s, loop_wait {LOOP_WAIT_S} s, "
             f"retry_timeout {RETRY_TIMEOUT_S} s; 300 events/s; leader SIGKILLed with its PostgreSQL", "",
             "| run | new leader (s after the kill) | first commit on it (s) | lost_after_commit |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {r['leader_s']} | {r['first_commit_s']} | {r['lost_after_commit']} |" for i, r in enumerate(runs)]
    lines.append(f"| median | {median['leader_s']} | {median['first_commit_s']} | |")
    save_results(RESULTS, f"patroni-failover-{results['date']}", results, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
