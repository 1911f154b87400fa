#!/usr/bin/env python3
"""The per-frame cost budget: CPU per event of each process at 30, 300 and 3,000 single-event frames/s and at full speed.

    python bench/frame_cost.py --seconds 30 --full-events 60000 [--rates 30 300 3000] [--rounds 1]
    python bench/frame_cost.py --profile --seconds 20      # and where each µs goes (py-spy)
    python bench/frame_cost.py --idle 30 --rates --full-events 0   # an idle service alone

On one throwaway PostgreSQL (default durability), per round and rate: the
service with its defaults, a separate sender (bench/loadgen.py) of
single-event frames at the rate for --seconds, then --full-events as fast as
the service takes them. Prints, per process (front, writers, supervisor,
PostgreSQL), CPU µs per event, the service's share of one core, p50/p99
receive-to-commit and the average batch; writes
``bench/results/frame-cost-<date>.json`` and ``.md``. With --idle, first the
service with no sender for that many seconds: each process's CPU in ms per
second (what a plant costs when it sends nothing).

With --profile, each rate runs once more under py-spy (``pip install
py-spy``; ptrace: root or ``kernel.yama.ptrace_scope=0``), the front and
writer 0 recorded at 200 Hz with ``--gil --nonblocking`` (not pausing them): only samples of a thread holding
the GIL, that is running Python code, so each sample is 5 ms of Python CPU
(py-spy's own idle detection takes a sleeping thread for a busy one on these
VMs). Their main threads' samples are grouped by the step of the path they
are in; what the process's CPU (psutil) holds beyond them is work outside
Python: the kernel's wake-ups and system calls, libzmq, libpq, numpy's C
loops. A table of µs per event. py-spy takes CPU itself, so the profiled
runs are not the ones whose totals are quoted.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profile import RATE_HZ, record  # noqa: E402

from compare import RESULTS, machine, run_ingestor, save_results  # noqa: E402
from throughput import fresh_db, sender, start_service, throwaway_server  # noqa: E402

from ingestor import stats  # noqa: E402

SERVICE = ("supervisor", "front")  # and every writer-N

# The steps of an event's path, by the function a sample's innermost frames are in (first match wins).
STEPS = (
    ("wait for a frame (poll, wake-up)", ("Poller.poll", "Socket.poll", "Lane.wait_batch", "Semaphore.acquire")),
    ("receive (recv, drain)", ("_receive", "recv_multipart", "Socket.recv", "Socket.get")),
    ("decode + validate", ("decode_frame", "_Batch.decode", "RecordBuilder.add", "_is_json", "_text")),
    ("build records", ("RecordBuilder",)),
    ("place into the ring", ("Placement", "Lane.put", "Lane.free", "Lane.used")),
    ("PostgreSQL round trip (wait)", ("Connection.wait", "wait_c", "wait_conn")),
    ("statement: parameters, psycopg", ("Cursor", "PostgresQuery", "Dumper", "Transformer", "conn_encoding",
                                       "Connection.execute", "BaseCursor")),
    ("claims, chain links", ("Claims", "Chains", "canonical_from_records", "_Keys", "link")),
    ("commit bookkeeping (counters, acks, release)", ("_committed", "AckTable", "latency_buckets", "bucket_of",
                                                      "_acknowledge", "Lane.release", "Writer._commit",
                                                      "Writer.write_batch")),
    ("the batch's arrays (numpy)", ("_write_small", "_write_general", "BinaryArray", "texts", "upsert_params",
                                    "copy_payload", "build")),
    ("pool", ("ConnectionPool", "_GeneratorContextManager")),
)


def step_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        name = frame.split(" (")[0]
        for step, keys in STEPS:
            if any(k in name for k in keys):
                return step
    return "other (" + stack[-1].split(" (")[0] + ")"


def breakdown(raw: Path, root: str, cpu_s: float, events: int) -> dict[str, float]:
    """µs per event by step from ``--gil`` samples (each 1/RATE_HZ s of Python), and the rest of ``cpu_s``."""
    by_step: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if root not in stack:
            continue  # the pool's threads, interpreter start-up
        by_step[step_of(stack.split(";"))] += int(n)
    out = {step: round(1e6 * n / RATE_HZ / events, 1) for step, n in by_step.most_common()}
    out[OUTSIDE] = round(1e6 * cpu_s / events - sum(out.values()), 1)
    return out


OUTSIDE = "outside Python: wake-ups, system calls, libzmq, libpq, numpy's C loops"


def measure(server, workdir: Path, name: str, rate: float, seconds: float, events: int) -> dict:
    r = run_ingestor(server, workdir, name, events if not rate else 0, rate, seconds if rate else 0, [],
                     events_per_frame=1)
    procs = r["processes"]
    service = sum(v["cpu_s"] for n, v in procs.items() if n in SERVICE or n.startswith("writer"))
    r["service_cpu_s"] = round(service, 2)
    r["us_per_event"] = {n: round(1e6 * v["cpu_s"] / r["events"], 1) for n, v in procs.items()}
    r["us_per_event"]["service"] = round(1e6 * service / r["events"], 1)
    r["service_core_pct"] = round(100 * service / r["seconds"], 2)
    return r


def idle(server, workdir: Path, name: str, seconds: float) -> dict[str, float]:
    """The service's processes' CPU in ms per second over ``seconds`` with no sender, nor stats asked for."""
    proc, _, stats_ep = start_service(fresh_db(server, name), workdir)
    try:
        writers = [w["pid"] for w in stats.query(stats_ep)["writers"]]
        procs = {"supervisor": psutil.Process(proc.pid)}
        for c in psutil.Process(proc.pid).children():
            if "resource_tracker" not in " ".join(c.cmdline()):
                procs[f"writer-{writers.index(c.pid)}" if c.pid in writers else "front"] = c
        time.sleep(3)  # past the start's work
        before = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}
        time.sleep(seconds)
        figures = {n: round((sum(p.cpu_times()[:2]) - before[n]) / seconds * 1000, 2) for n, p in procs.items()}
    finally:
        proc.terminate()
        proc.wait(120)
    figures["service"] = round(sum(figures.values()), 2)
    return figures


def profiled(server, workdir: Path, rate: float, seconds: float, out: Path) -> dict:
    """One more run at ``rate`` with py-spy on the front and writer 0: µs per event by step, per process."""
    dsn = fresh_db(server, f"prof_{int(rate)}")
    proc, bind, stats_ep = start_service(dsn, workdir)
    try:  # the service goes with the run, whatever fails (py-spy missing, no ptrace)
        writers = [w["pid"] for w in stats.query(stats_ep)["writers"]]
        front = next(c.pid for c in psutil.Process(proc.pid).children()
                     if c.pid not in writers and "resource_tracker" not in " ".join(c.cmdline()))
        send = sender(bind, 0, rate, 0, seconds + 6, 1)
        time.sleep(3)
        pids = {"front": front, "writer-0": writers[0]}
        before = {role: sum(psutil.Process(pid).cpu_times()[:2]) for role, pid in pids.items()}
        persisted = stats.query(stats_ep)["persisted"]
        jobs = [record(pid, seconds, out / f"profile-{role}-{int(rate)}.txt", "raw", "--gil", "--nonblocking")
                for role, pid in pids.items()]
        for job in jobs:
            job.wait()
        cpu = {role: sum(psutil.Process(pid).cpu_times()[:2]) - before[role] for role, pid in pids.items()}
        events = stats.query(stats_ep)["persisted"] - persisted
        send.wait(60)
    finally:
        proc.terminate()
        proc.wait(120)
    return {role: breakdown(out / f"profile-{role}-{int(rate)}.txt", root, cpu[role], events)
            for role, root in (("front", "Front.run"), ("writer-0", "Writer.run"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rates", type=float, nargs="*", default=[30, 300, 3000])
    p.add_argument("--idle", type=float, default=0.0, metavar="SECONDS", help="first an idle service this long")
    p.add_argument("--full-events", type=int, default=60_000, help="single-event frames at full speed; 0: skip")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="py-spy breakdown instead of the totals")
    p.add_argument("--label", default="", help="appended to the results' file name")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    workdir, server = throwaway_server("framecost")
    date = time.strftime("%Y-%m-%d")
    results: dict = {"machine": machine(server), "date": date, "runs": []}
    stem = f"frame-cost-{date}{a.label}"
    try:
        if a.profile:
            a.out.mkdir(parents=True, exist_ok=True)
            results["profile"] = {str(int(r)): profiled(server, workdir, r, a.seconds, a.out) for r in a.rates}
            return save_results(a.out, stem + "-profile", results, profile_table(results)) or 0
        for i in range(a.rounds if a.idle else 0):
            results.setdefault("idle", []).append(idle(server, workdir, f"fc_idle_{i}", a.idle))
            print(f"round {i + 1}, idle: ms of CPU per second {results['idle'][-1]}", flush=True)
        for i in range(a.rounds):
            for rate in a.rates + ([0] if a.full_events else []):
                r = measure(server, workdir, f"fc_{i}_{int(rate)}", rate, a.seconds, a.full_events)
                r["rate"], r["round"] = rate, i + 1
                results["runs"].append(r)
                print(f"round {i + 1}, {f'{rate:g}/s' if rate else 'full speed'}: {r['events_per_s']:,} ev/s, "
                      f"service {r['us_per_event']['service']} µs/event, {r['service_core_pct']} % of a core, "
                      f"p99 {r['p99_ms']} ms", flush=True)
    finally:
        server.stop()
    save_results(a.out, stem, results, totals_table(results))
    return 0


def totals_table(results: dict) -> list[str]:
    lines = [f"{results['machine']}; {results['date']}; single-event frames, defaults (2 writers, alibi on)", ""]
    if results["runs"]:
        lines += ["| round | rate | events/s | service % of a core | µs per event: service | front | writer-0 "
                  "| writer-1 | supervisor | PostgreSQL | p50 / p99 ms | average batch |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results["runs"]:
        u = r["us_per_event"]
        rate = f"{r['rate']:g}/s" if r["rate"] else "full speed"
        lines.append(f"| {r['round']} | {rate} | {r['events_per_s']:,} "
                     f"| {r['service_core_pct']} | {u['service']} | {u.get('front', 0)} | {u.get('writer-0', 0)} "
                     f"| {u.get('writer-1', 0)} | {u.get('supervisor', 0)} | {u.get('postgres', 0)} "
                     f"| {r['p50_ms']} / {r['p99_ms']} | {r['average_batch_size']} |")
    for i, figures in enumerate(results.get("idle", []), 1):
        lines.append(f"Round {i}, idle (no sender), ms of CPU per second: "
                     + ", ".join(f"{n} {v}" for n, v in figures.items()))
    return lines


def profile_table(results: dict) -> list[str]:
    prof = results["profile"]
    rates = list(prof)
    lines = [f"{results['machine']}; {results['date']}; µs of CPU per event by step (py-spy --gil, 200 Hz, main "
             "thread: Python's own work; the rest of the process's psutil CPU is outside Python)", ""]
    for role in ("front", "writer-0"):
        steps = list(dict.fromkeys(s for r in rates for s in prof[r][role]))
        lines += [f"**{role}**", "", "| step | " + " | ".join(f"{r}/s" for r in rates) + " |",
                  "|---|" + "---:|" * len(rates)]
        for s in steps:
            lines.append(f"| {s} | " + " | ".join(str(prof[r][role].get(s, 0)) for r in rates) + " |")
        lines.append("| **total** | " + " | ".join(f"{sum(prof[r][role].values()):.1f}" for r in rates) + " |")
        lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())
