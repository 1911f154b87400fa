#!/usr/bin/env python3
"""End-to-end throughput beside raw COPY, in one run on one throwaway PostgreSQL.

    python bench/throughput.py --events 200000 --writers 2

1. starts a throwaway PostgreSQL (the machine's binaries, default durability);
2. (a) COPY: writes the run's rows to a CSV file and times
   ``COPY weighing_logs (...) FROM 'file' (FORMAT csv)``: the limit;
3. (b) the ingestor: starts ``ingestor run`` against the same database and
   drives it from a separate sender process (bench/loadgen.py) at full speed;
   events/s is events / (first send .. last commit);
4. (c) paced: 300 events/s for --paced-seconds, for the receive-to-commit
   latency an operator sees at the plant's normal rate.

Prints a Markdown table and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingestor import schema, stats  # noqa: E402
from ingestor.embedded_pg import EmbeddedPostgres  # noqa: E402
from ingestor.simulator import event  # noqa: E402

SCALES = 300
START_MS = 1_700_000_000_000


def throwaway_server(name: str, settings: dict[str, str] | None = None) -> tuple[Path, EmbeddedPostgres]:
    """A started PostgreSQL (default durability, plus ``settings``) in a new temporary directory
    ``ingestor-NAME-*``: (directory, server). The directory is deleted at exit unless $BENCH_KEEP is set."""
    workdir = Path(tempfile.mkdtemp(prefix=f"ingestor-{name}-"))
    workdir.chmod(0o755)  # the server may run as the postgres user
    if not os.environ.get("BENCH_KEEP"):  # a soak leaves 10-20 GB of PostgreSQL files behind
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    server = EmbeddedPostgres(workdir / "pgdata", settings=settings)
    server.start()
    return workdir, server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_db(server: EmbeddedPostgres, name: str) -> str:
    with psycopg.connect(server.dsn, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = server.dsn.replace("dbname=postgres", f"dbname={name}")
    schema.migrate(dsn)
    return dsn


def copy_baseline(server: EmbeddedPostgres, dsn: str, n: int) -> float:
    """Seconds to COPY the run's n rows from a CSV file (server-side)."""
    path = server.data_dir / "bench-rows.csv"
    created = "2026-01-01 00:00:00+00"
    with open(path, "w") as f:
        for i in range(n):
            e = event(i, scales=SCALES, seq_start=0, start_ms=START_MS, period_ms=1000.0)
            ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["ts"] / 1000)) + f".{e['ts'] % 1000:03d}+00"
            vals = [json.dumps({"val": str(e[k])}) if e[k] is not None else ""
                    for k in ("data_1", "data_2", "data_3", "data_4", "data_5")]
            vals = ['"' + v.replace('"', '""') + '"' if v else "" for v in vals]
            f.write(f"{e['scale_id']},{e['seq']},{ts},{created},{','.join(vals)}\n")
    os.chmod(path, 0o644)
    with psycopg.connect(dsn, autocommit=True) as c:
        t0 = time.perf_counter()
        c.execute(f"COPY weighing_logs (scale_id, seq, measured_at, created_at, data_1, data_2, data_3, data_4, data_5) "
                  f"FROM '{path}' (FORMAT csv)")
        seconds = time.perf_counter() - t0
        assert c.execute("SELECT count(*) FROM weighing_logs").fetchone()[0] == n
    path.unlink()
    return seconds


def start_service(dsn: str, workdir: Path, *extra: str) -> tuple[subprocess.Popen, str, str]:
    """Start ``ingestor run`` on free local ports with ``extra`` options; wait until it runs.

    Returns (process, PULL endpoint, stats endpoint). Acked mode and HTTP are off.
    """
    bind, stats_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    log = open(workdir / f"service-{time.time_ns()}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestor.cli", "run", "--dsn", dsn, "--bind", bind, "--ack-bind", "off",
         "--http-bind", "off", "--stats-endpoint", stats_ep, "--data-dir", str(workdir), "--log-level", "warning",
         *extra],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            s = stats.query(stats_ep, 0.5)
            if s["status"] == "running" and all(w["alive"] for w in s["writers"]):
                return proc, bind, stats_ep
        except stats.StatsUnavailable:
            pass
        time.sleep(0.2)
    raise SystemExit(f"service did not start; see {workdir}")


def first_commit_after(stats_ep: str, moment: float) -> float:
    """The Unix time of the first commit stamped after ``moment`` (stats' ``last_persisted_at``), once there is one."""
    while True:
        last = stats.query(stats_ep)["last_persisted_at"]
        if last and dt.datetime.fromisoformat(last).timestamp() > moment:
            return dt.datetime.fromisoformat(last).timestamp()
        time.sleep(0.01)


def wait_persisted(stats_ep: str, n: int, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = stats.query(stats_ep)
        if s["persisted"] + s["failed"] >= n:
            return s
        time.sleep(0.05)
    raise SystemExit(f"only {s['persisted']} of {n} persisted in {timeout_s} s")


def sender(bind: str, n: int, rate: float, seq_start: int, duration: float = 0,
           events_per_frame: int = 100, scales: int = SCALES) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--endpoint", bind, "--scales", str(scales),
            "--rate", str(rate), "--seq-start", str(seq_start), "--start-ms", str(START_MS),
            "--events-per-frame", str(events_per_frame)]
    args += ["--events", str(n)] if n else []
    args += ["--duration", str(duration)] if duration else []
    return subprocess.Popen(args, stdout=subprocess.PIPE, cwd=ROOT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--writers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--paced-seconds", type=float, default=20.0)
    a = p.parse_args()

    workdir, server = throwaway_server("bench")
    results: dict = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores", "events": a.events,
                     "date": time.strftime("%Y-%m-%d")}
    try:
        dsn = fresh_db(server, "bench_copy")
        copy_s = copy_baseline(server, dsn, a.events)
        results["copy_events_per_s"] = round(a.events / copy_s)
        rows = [("(a) COPY from file", results["copy_events_per_s"], 1.0, "", "")]
        for w in a.writers:
            dsn = fresh_db(server, f"bench_w{w}")
            proc, bind, stats_ep = start_service(dsn, workdir, "--writers", str(w))
            t0 = time.perf_counter()
            send = sender(bind, a.events, 0, 0)
            s = wait_persisted(stats_ep, a.events)
            seconds = time.perf_counter() - t0
            send.wait(60)
            rate = round(a.events / seconds)
            lat = s["latency_ms"]
            results[f"ingestor_w{w}"] = {"events_per_s": rate, "ratio_to_copy": round(rate / results["copy_events_per_s"], 3),
                                         "p50_ms": lat["p50"], "p99_ms": lat["p99"],
                                         "average_batch_size": s["average_batch_size"]}
            rows.append((f"(b) ingestor, {w} writer(s), full speed", rate, rate / results["copy_events_per_s"],
                         lat["p50"], lat["p99"]))
            proc.terminate()
            proc.wait(120)
        # (c) paced latency on a fresh service, default settings
        dsn = fresh_db(server, "bench_paced")
        proc, bind, stats_ep = start_service(dsn, workdir, "--writers", str(a.writers[-1]))
        send = sender(bind, 0, 300, 0, a.paced_seconds)
        send.wait(a.paced_seconds + 60)
        time.sleep(1)
        s = stats.query(stats_ep)
        proc.terminate()
        proc.wait(120)
        results["paced_300"] = {"events": s["persisted"], "p50_ms": s["latency_ms"]["p50"], "p99_ms": s["latency_ms"]["p99"]}
        rows.append((f"(c) ingestor at 300 events/s, {a.writers[-1]} writer(s)", s["events_per_s"], None,
                     s["latency_ms"]["p50"], s["latency_ms"]["p99"]))
    finally:
        server.stop()

    print(f"\n{results['machine']}, {a.events} events, {results['date']}\n")
    print("| run | events/s | ratio to COPY | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, rate, ratio, p50, p99 in rows:
        print(f"| {name} | {rate:,.0f} | {'' if ratio is None else f'{ratio:.2f}'} | {p50} | {p99} |")
    print()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
