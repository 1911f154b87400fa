#!/usr/bin/env python3
"""Side by side, in one run on one throwaway PostgreSQL: COPY, the seed system's way, the ingestor.

    python bench/compare.py --events 200000 --writers 1 2 3 4

Runs against the same generated rows (bench's deterministic plant of 300
scales) and a PostgreSQL with default durability:

(a) ``COPY weighing_logs FROM 'file' (FORMAT csv)`` of the rows: the limit;
(b) the seed system's persistence design: per event one INSERT into
    ``weighing_logs`` and one UPSERT of ``scale_current_states``, each its
    own statement round trip, a COMMIT every 50 events (``--seed-events`` of
    them; it is slow);
(c) the ingestor end to end (``ingestor run`` as a subprocess), fed by a
    separate sender process (bench/loadgen.py) at full speed, once per
    ``--writers`` count; events/s = events / (first send .. last commit);
(d) the ingestor with default settings at 300 events/s for
    ``--paced-seconds``: the receive-to-commit latency at the plant's rate.

With ``--alibi-ab ROUNDS`` it runs instead, ROUNDS times in alternating order,
(a) and the ingestor with 2 writers with the alibi chain on and off
(``--alibi true|false``, docs/alibi.md): throughput as a ratio to (a) of the
same round, and the bytes per event weighing_logs takes on disk.

Every run samples each process (sender, supervisor, front, writers, every
PostgreSQL process) with psutil: CPU seconds and peak RSS. Prints a Markdown
table, writes ``bench/results/compare-<date>.json`` and a PNG (throughput
against writer count; latency CDF).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import psycopg
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import SCALES, START_MS, copy_baseline, fresh_db, sender, start_service, throwaway_server  # noqa: E402

from ingestor import stats, verifier  # noqa: E402
from ingestor.embedded_pg import EmbeddedPostgres  # noqa: E402
from ingestor.simulator import event  # noqa: E402

RESULTS = ROOT / "bench" / "results"

SEED_INSERT = """INSERT INTO weighing_logs (scale_id, seq, measured_at, created_at, data_1, data_2, data_3, data_4, data_5)
VALUES (%s, %s, to_timestamp(%s / 1000.0), now(), %s, %s, %s, %s, %s)"""
SEED_UPSERT = """INSERT INTO scale_current_states (scale_id, seq, measured_at, data_1, data_2, data_3, data_4, data_5, updated_at)
VALUES (%s, %s, to_timestamp(%s / 1000.0), %s, %s, %s, %s, %s, now())
ON CONFLICT (scale_id) DO UPDATE SET seq = EXCLUDED.seq, measured_at = EXCLUDED.measured_at,
  data_1 = EXCLUDED.data_1, data_2 = EXCLUDED.data_2, data_3 = EXCLUDED.data_3, data_4 = EXCLUDED.data_4,
  data_5 = EXCLUDED.data_5, updated_at = EXCLUDED.updated_at"""


class Sampler:
    """Samples CPU seconds and peak RSS of named processes every 0.2 s, in a thread.

    With ``pss=True`` also each process's peak PSS (proportional set size:
    shared pages such as the ring and the libraries divided among the
    processes mapping them, so the sum over processes is their real memory),
    read every 1 s since it walks /proc/PID/smaps.
    """

    def __init__(self, pss: bool = False) -> None:
        self.procs: dict[int, tuple[str, psutil.Process]] = {}
        self.cpu: dict[str, float] = {}
        self.rss: dict[str, int] = {}
        self.pss: dict[str, int] | None = {} if pss else None
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._finders: list = []

    def watch(self, finder) -> None:
        """``finder()`` -> {pid: name}; called at every sample, so late children are seen too."""
        self._finders.append(finder)

    def __enter__(self) -> Sampler:
        self._sample()
        self._base = {name: self.cpu.get(name, 0.0) for name in self.cpu}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self) -> None:
        for finder in self._finders:
            for pid, name in finder().items():
                if pid not in self.procs:
                    try:
                        self.procs[pid] = (name, psutil.Process(pid))
                    except psutil.Error:
                        continue
        totals: dict[str, float] = {}
        self._samples += 1
        read_pss = self.pss is not None and self._samples % 5 == 1
        for pid, (name, p) in list(self.procs.items()):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    rss = p.memory_info().rss
                    if read_pss:
                        self.pss[name] = max(self.pss.get(name, 0), p.memory_full_info().pss)
            except psutil.Error:
                continue  # gone: its last sample stands
            self._last = getattr(self, "_last", {})
            self._last[pid] = (name, t.user + t.system)
            self.rss[name] = max(self.rss.get(name, 0), rss)
        for name, cpu in getattr(self, "_last", {}).values():
            totals[name] = totals.get(name, 0.0) + cpu
        self.cpu = totals

    def figures(self) -> dict[str, dict]:
        base = getattr(self, "_base", {})
        out = {name: {"cpu_s": round(self.cpu[name] - base.get(name, 0.0), 2), "peak_rss_mb": round(self.rss[name] / 2**20, 1)}
               for name in sorted(self.cpu)}
        for name, pss in (self.pss or {}).items():
            out[name]["peak_pss_mb"] = round(pss / 2**20, 1)
        return out


def postgres_procs(server: EmbeddedPostgres):
    def find() -> dict[int, str]:
        pidfile = server.pgdata / "postmaster.pid"
        try:
            master = psutil.Process(int(pidfile.read_text().split()[0]))
        except (OSError, ValueError, psutil.Error):
            return {}
        return {master.pid: "postgres", **{c.pid: "postgres" for c in master.children()}}
    return find


def service_procs(proc: subprocess.Popen, writers_pids) -> callable:
    def find() -> dict[int, str]:
        out = {proc.pid: "supervisor"}
        try:
            children = psutil.Process(proc.pid).children()
        except psutil.Error:
            return out
        writers = writers_pids()
        for c in children:
            try:
                if "resource_tracker" in " ".join(c.cmdline()):
                    continue  # multiprocessing's helper, not ours
            except psutil.Error:
                continue
            out[c.pid] = f"writer-{writers.index(c.pid)}" if c.pid in writers else "front"
        return out
    return find


def seed_way(dsn: str, n: int) -> float:
    """Seconds for the seed system's per-event INSERT + UPSERT, COMMIT every 50."""
    with psycopg.connect(dsn) as conn:
        t0 = time.perf_counter()
        for i in range(n):
            e = event(i, scales=SCALES, seq_start=0, start_ms=START_MS, period_ms=1000.0)
            data = [Jsonb({"val": str(e[k])}) if e[k] is not None else None
                    for k in ("data_1", "data_2", "data_3", "data_4", "data_5")]
            conn.execute(SEED_INSERT, (e["scale_id"], e["seq"], e["ts"], *data))
            conn.execute(SEED_UPSERT, (e["scale_id"], e["seq"], e["ts"], *data))
            if i % 50 == 49:
                conn.commit()
        conn.commit()
        return time.perf_counter() - t0


def run_ingestor(server: EmbeddedPostgres, workdir: Path, name: str, events: int, rate: float, duration: float,
                 extra: list[str], pss: bool = False, events_per_frame: int = 100, scales: int = SCALES) -> dict:
    dsn = fresh_db(server, name)
    proc, bind, stats_ep = start_service(dsn, workdir, *extra)
    writer_pids = [w["pid"] for w in stats.query(stats_ep)["writers"]]
    sampler = Sampler(pss=pss)
    sampler.watch(postgres_procs(server))
    sampler.watch(service_procs(proc, lambda: writer_pids))
    with sampler:
        t0 = time.perf_counter()
        send = sender(bind, events, rate, 0, duration, events_per_frame, scales)
        sampler.watch(lambda: {send.pid: "sender"})
        target = events
        while True:
            s = stats.query(stats_ep)
            if send.poll() is not None and not target:
                target = json.loads(send.stdout.read())["events"]
            if target and s["persisted"] + s["failed"] >= target and s["pending"] == 0:
                break
            # at a paced rate, ask seldom: every answer costs the supervisor a snapshot, which the figures count
            time.sleep(0.05 if not rate else 0.5)
        seconds = time.perf_counter() - t0
    send.wait(30)
    proc.terminate()
    proc.wait(120)
    with psycopg.connect(dsn) as c:  # what the rows take on disk: heap, TOAST and indexes of every partition
        heap, total = c.execute("SELECT sum(pg_table_size(inhrelid)), sum(pg_total_relation_size(inhrelid)) "
                                "FROM pg_inherits WHERE inhparent = 'weighing_logs'::regclass").fetchone()
    return {
        "dsn": dsn, "heap_bytes_per_event": round(int(heap) / target, 1), "bytes_per_event": round(int(total) / target, 1),
        "events": target, "seconds": round(seconds, 2), "events_per_s": round(target / seconds),
        "p50_ms": s["latency_ms"]["p50"], "p99_ms": s["latency_ms"]["p99"],
        "average_batch_size": s["average_batch_size"], "latency_histogram": s["latency_histogram"],
        "processes": sampler.figures(),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ws = sorted(int(k[1:]) for k in results["ingestor"])
    rates = [results["ingestor"][f"w{w}"]["events_per_s"] for w in ws]
    ax1.plot(ws, rates, "o-", label="ingestor (sender + ingestor + PostgreSQL on 2 cores)")
    ax1.axhline(results["copy"]["events_per_s"], color="green", ls="--", label="(a) COPY from file")
    ax1.axhline(results["seed"]["events_per_s"], color="red", ls=":", label="(b) seed: INSERT+UPSERT per event")
    ax1.set_xlabel("writers")
    ax1.set_ylabel("events/s")
    ax1.set_xticks(ws)
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    ax1.set_title("throughput against writer count")
    for label, run in [*((f"{w} writers, full speed", results["ingestor"][f"w{w}"]) for w in ws),
                       ("300 events/s, defaults", results["paced"])]:
        h = run["latency_histogram"]
        total = sum(h["count"])
        acc, ys = 0, []
        for c in h["count"]:
            acc += c
            ys.append(acc / total)
        ax2.step(h["upper_ms"], ys, where="post", label=label)
    ax2.set_xscale("log")
    ax2.set_xlabel("receive-to-commit latency, ms")
    ax2.set_ylabel("fraction of events")
    ax2.set_title("latency CDF")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{results['machine']}, {results['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--writers", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--seed-events", type=int, default=20_000)
    p.add_argument("--paced-seconds", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--alibi-ab", type=int, default=0, metavar="ROUNDS",
                   help="instead: COPY and 2 writers with the alibi chain on and off, ROUNDS times alternating")
    a = p.parse_args()
    if a.alibi_ab:
        return alibi_ab(a.events, a.alibi_ab, a.out)

    workdir, server = throwaway_server("compare")
    date = time.strftime("%Y-%m-%d")
    results: dict = {"machine": machine(server), "date": date, "events": a.events, "ingestor": {}}
    try:
        dsn = fresh_db(server, "cmp_copy")
        sampler = Sampler()
        sampler.watch(postgres_procs(server))
        with sampler:
            seconds = copy_baseline(server, dsn, a.events)
        results["copy"] = {"events_per_s": round(a.events / seconds), "processes": sampler.figures()}
        print(f"(a) COPY: {results['copy']['events_per_s']:,} events/s", flush=True)

        dsn = fresh_db(server, "cmp_seed")
        sampler = Sampler()
        sampler.watch(postgres_procs(server))
        sampler.watch(lambda: {os.getpid(): "seed client"})
        with sampler:
            seconds = seed_way(dsn, a.seed_events)
        results["seed"] = {"events": a.seed_events, "events_per_s": round(a.seed_events / seconds),
                           "processes": sampler.figures()}
        print(f"(b) seed way: {results['seed']['events_per_s']:,} events/s", flush=True)

        for w in a.writers:
            r = run_ingestor(server, workdir, f"cmp_w{w}", a.events, 0, 0, ["--writers", str(w)])
            results["ingestor"][f"w{w}"] = r
            print(f"(c) ingestor, {w} writers: {r['events_per_s']:,} events/s", flush=True)
        results["paced"] = run_ingestor(server, workdir, "cmp_paced", 0, 300, a.paced_seconds, [])
        print(f"(d) 300 events/s, defaults: p99 {results['paced']['p99_ms']} ms", flush=True)
    finally:
        server.stop()

    copy_rate, seed_rate = results["copy"]["events_per_s"], results["seed"]["events_per_s"]
    lines = [f"{results['machine']}; {a.events:,} events; {date}", "",
             "| run | events/s | × COPY | × seed | p50 ms | p99 ms | CPU s (peak RSS MB) per process |",
             "|---|---:|---:|---:|---:|---:|---|"]

    def procs(r: dict) -> str:
        return ", ".join(f"{n} {v['cpu_s']} ({v['peak_rss_mb']})" for n, v in r["processes"].items())

    lines.append(f"| (a) COPY from file | {copy_rate:,} | 1.00 | {copy_rate / seed_rate:.0f} | | | {procs(results['copy'])} |")
    lines.append(f"| (b) seed: INSERT + UPSERT per event, COMMIT per 50 | {seed_rate:,} | {seed_rate / copy_rate:.3f} | 1 "
                 f"| | | {procs(results['seed'])} |")
    for w in a.writers:
        r = results["ingestor"][f"w{w}"]
        lines.append(f"| (c) ingestor, {w} writer(s), full speed | {r['events_per_s']:,} | {r['events_per_s'] / copy_rate:.2f} "
                     f"| {r['events_per_s'] / seed_rate:.0f} | {r['p50_ms']} | {r['p99_ms']} | {procs(r)} |")
    r = results["paced"]
    lines.append(f"| (d) ingestor, defaults, 300 events/s | {r['events_per_s']:,} | | | {r['p50_ms']} | {r['p99_ms']} "
                 f"| {procs(r)} |")
    table = "\n".join(lines)
    print("\n" + table + "\n")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"compare-{date}.json").write_text(json.dumps(results, indent=1))
    (a.out / f"compare-{date}.md").write_text(table + "\n")
    plot(results, a.out / f"compare-{date}.png")
    print(f"wrote {a.out}/compare-{date}.json, .md and .png")
    return 0


def alibi_ab(events: int, rounds: int, out: Path) -> int:
    """The alibi chain's cost: rounds of (COPY, chain on, chain off), the order of on and off alternating."""
    workdir, server = throwaway_server("alibi")
    date = time.strftime("%Y-%m-%d")
    results: dict = {"machine": machine(server), "date": date, "events": events, "rounds": []}
    try:
        for n in range(rounds):
            seconds = copy_baseline(server, fresh_db(server, f"ab_copy{n}"), events)
            one = {"copy_events_per_s": round(events / seconds)}
            for mode in (("true", "false") if n % 2 == 0 else ("false", "true")):
                r = run_ingestor(server, workdir, f"ab_{mode}{n}", events, 0, 0, ["--writers", "2", "--alibi", mode])
                one["on" if mode == "true" else "off"] = r
                if mode == "true":  # the verifier over what this run stored, alone on the machine
                    t0 = time.perf_counter()
                    report = verifier.verify(r["dsn"], "public")
                    r["verify_records_per_s"] = round(report.records / (time.perf_counter() - t0))
                    assert report.findings == [] and report.records == events, report
                print(f"round {n + 1}, chain {'on' if mode == 'true' else 'off'}: {r['events_per_s']:,} events/s, "
                      f"{r['bytes_per_event']} B/event", flush=True)
            results["rounds"].append(one)
    finally:
        server.stop()
    lines = [f"{results['machine']}; {events:,} events per run; 2 writers; {date}", "",
             "| round | COPY events/s | chain on: events/s (× COPY) | chain off: events/s (× COPY) | on / off "
             "| B/event on (heap) | B/event off (heap) | writers' CPU s on / off | verifier records/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in enumerate(results["rounds"], 1):
        copy_rate, on, off = r["copy_events_per_s"], r["on"], r["off"]

        def cpu(run: dict) -> float:
            return round(sum(v["cpu_s"] for k, v in run["processes"].items() if k.startswith("writer")), 1)

        lines.append(f"| {n} | {copy_rate:,} | {on['events_per_s']:,} ({on['events_per_s'] / copy_rate:.2f}) "
                     f"| {off['events_per_s']:,} ({off['events_per_s'] / copy_rate:.2f}) "
                     f"| {on['events_per_s'] / off['events_per_s']:.3f} | {on['bytes_per_event']} ({on['heap_bytes_per_event']}) "
                     f"| {off['bytes_per_event']} ({off['heap_bytes_per_event']}) | {cpu(on)} / {cpu(off)} "
                     f"| {on['verify_records_per_s']:,} |")
    save_results(out, f"alibi-ab-{date}", results, lines)
    return 0


def save_results(out: Path, stem: str, results: dict, lines: list[str]) -> None:
    """Print the Markdown table ``lines`` and write ``out/STEM.json`` (``results``) and ``out/STEM.md``."""
    table = "\n".join(lines)
    print("\n" + table + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(table + "\n")
    print(f"wrote {out}/{stem}.json and .md")


def machine(server: EmbeddedPostgres) -> str:
    """This machine in one line: architecture, cores, memory, Python, PostgreSQL."""
    return (f"{platform.machine()}, {os.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB, "
            f"{platform.python_implementation()} {platform.python_version()}, PostgreSQL {server_version(server)}")


def server_version(server: EmbeddedPostgres) -> str:
    with psycopg.connect(server.dsn) as c:
        return c.execute("SHOW server_version").fetchone()[0].split()[0]


if __name__ == "__main__":
    sys.exit(main())
