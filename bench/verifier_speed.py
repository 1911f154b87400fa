"""The alibi verifier's speed on the bench plant, and its cost on a tampered far-future row (issue 26).

    python bench/verifier_speed.py --events 300000 --before a6f96f0

The service (2 writers, chain on) stores EVENTS events of 300 scales in a
fresh database of a throwaway server; then ``ingestor.verifier.verify`` runs
ROUNDS times on it (records/s, median), first clean, then with one row's
created_at moved to the year 2200 and then to 9999 (rows outside every day
partition land in the default partition; an earlier verifier walked every
calendar day between the oldest and the newest row). With ``--before REV``
the same runs are made with the package of git revision REV (a temporary
``git worktree``), in a subprocess, against the same database, so both are
measured in one run on the same rows. Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compare import machine, run_ingestor, save_results  # noqa: E402
from throughput import ROOT, throwaway_server  # noqa: E402

# what one timed verify runs, in a subprocess whose sys.path starts with the package to measure
RUN = """
import sys, time, json
sys.path.insert(0, sys.argv[1])
from ingestor import verifier
t0 = time.perf_counter()
r = verifier.verify(sys.argv[2], "public")
print(json.dumps({"seconds": time.perf_counter() - t0, "records": r.records, "findings": len(r.findings)}))
"""
TAMPERED = {"clean": None, "a row moved to 2200": "2200-01-01 12:00+00", "a row moved to 9999": "9999-12-31 12:00+00"}


def timed(package: Path, dsn: str, timeout_s: float) -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", RUN, str(package), dsn], capture_output=True, text=True,
                              timeout=timeout_s, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return {"seconds": None, "note": f"stopped after {timeout_s:.0f} s"}
    if done.returncode:
        return {"seconds": None, "note": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--before", metavar="REV", help="also measure the verifier of this git revision")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one verify may take (default: 120)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args()
    workdir, server = throwaway_server("verifier")
    packages = {"now": ROOT}
    worktree = None
    try:
        if a.before:
            worktree = Path(tempfile.mkdtemp(prefix="ingestor-before-"))
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), a.before], cwd=ROOT, check=True,
                           capture_output=True)
            packages[a.before] = worktree
        stored = run_ingestor(server, workdir, "verify", a.events, 0, 0, ["--writers", "2", "--alibi", "true"])
        dsn = stored["dsn"]
        results: dict = {"events": stored["events"], "machine": machine(server), "runs": {}}
        lines = [f"# The alibi verifier, {stored['events']:,} bench-plant events (300 scales), "
                 f"{dt.date.today()}", "", results["machine"], "",
                 "| verifier | rows | median s | records/s | runs (s) |", "|---|---|---:|---:|---|"]
        for label, moved_to in TAMPERED.items():
            if moved_to is not None:
                with psycopg.connect(dsn, autocommit=True) as c:
                    c.execute("UPDATE weighing_logs SET created_at = %s WHERE id = (SELECT max(id) FROM weighing_logs)",
                              (moved_to,))
            for name, package in packages.items():
                runs = [timed(package, dsn, a.timeout) for _ in range(a.rounds)]
                seconds = [r["seconds"] for r in runs if r["seconds"] is not None]
                median = statistics.median(seconds) if len(seconds) == len(runs) else None
                records = runs[0].get("records", 0)
                results["runs"][f"{name}: {label}"] = runs
                rate = f"{records / median:,.0f}" if median else "-"
                shown = ", ".join(f"{r['seconds']:.2f}" if r["seconds"] is not None else r["note"] for r in runs)
                lines.append(f"| {name} | {label} | {median and f'{median:.2f}' or '-'} | {rate} | {shown} |")
        save_results(a.out, f"verifier-speed-{dt.date.today()}", results, lines)
    finally:
        server.stop("immediate")
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
