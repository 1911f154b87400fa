#!/usr/bin/env python3
"""Soak: the ingestor (default settings) at a steady 80 % of its measured maximum, for minutes.

    python bench/soak.py --minutes 10                 # rate: 80 % of the newest compare result
    python bench/soak.py --minutes 10 --rate 60000

Starts a throwaway PostgreSQL (default durability) and ``ingestor run``,
drives it from a separate sender process (bench/loadgen.py) at ``--rate``,
and every ``--every`` seconds records the RSS of every process (supervisor,
front, each writer, the sender, PostgreSQL's processes summed), ``ring_used``,
``spool_bytes``, ``events_per_s`` and p99 latency. Writes
``bench/results/soak-<date>-<rate>.json`` and ``.png`` and prints whether RSS and
``ring_used`` stayed flat: each process's RSS growth from the second minute
to the last (the first minute is warm-up: pools, caches, numpy), and the
ring's mean fill in the last minute.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import RESULTS, postgres_procs  # noqa: E402
from throughput import fresh_db, sender, start_service, throwaway_server  # noqa: E402

from ingestor import stats  # noqa: E402


def measured_max() -> int:
    files = sorted(glob.glob(str(RESULTS / "compare-*.json")))
    if not files:
        raise SystemExit("no bench/results/compare-*.json yet: run bench/compare.py first, or give --rate")
    results = json.loads(Path(files[-1]).read_text())
    return max(r["events_per_s"] for r in results["ingestor"].values())


def rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def postgres_activity(conn: psycopg.Connection) -> dict:
    """What PostgreSQL does besides our writes: checkpoints so far, WAL written, autovacuum workers now."""
    checkpoints, wal = conn.execute(
        "SELECT checkpoints_timed + checkpoints_req, pg_current_wal_lsn() - '0/0' FROM pg_stat_bgwriter").fetchone()
    vacuums = [q for (q,) in conn.execute(
        "SELECT query FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND query <> ''")]
    return {"checkpoints": checkpoints, "wal_mb": round(float(wal) / 2**20), "autovacuum": vacuums}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=0.0, help="events/s (default: 80 %% of the newest compare maximum)")
    p.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--pg", action="append", default=[], metavar="NAME=VALUE",
                   help="a PostgreSQL setting for the throwaway server, such as max_wal_size=8GB (repeatable)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    settings = dict(kv.split("=", 1) for kv in a.pg)
    rate = a.rate or round(0.8 * measured_max())
    seconds = a.minutes * 60

    workdir, server = throwaway_server("soak", settings)
    samples = []
    try:
        dsn = fresh_db(server, "soak")
        proc, bind, stats_ep = start_service(dsn, workdir)
        s = stats.query(stats_ep)
        writers = [w["pid"] for w in s["writers"]]
        front = [c.pid for c in psutil.Process(proc.pid).children()
                 if c.pid not in writers and "resource_tracker" not in " ".join(c.cmdline())]
        names = {proc.pid: "supervisor", **{pid: "front" for pid in front},
                 **{pid: f"writer-{i}" for i, pid in enumerate(writers)}}
        pg = postgres_procs(server)
        watch = psycopg.connect(dsn, autocommit=True)
        send = sender(bind, 0, rate, 0, seconds)
        names[send.pid] = "sender"
        t0 = time.monotonic()
        print(f"soak: {rate:,.0f} events/s for {a.minutes:g} min, {len(writers)} writers", flush=True)
        while send.poll() is None:
            time.sleep(a.every)
            s = stats.query(stats_ep)
            sample = {"t": round(time.monotonic() - t0, 1), "ring_used": s["ring_used"],
                      "ring_capacity": s["ring_capacity"], "spool_bytes": s["spool_bytes"],
                      "events_per_s": s["events_per_s"], "p99_ms": s["latency_ms"]["p99"],
                      "rss_mb": {name: round(rss_mb(pid), 1) for pid, name in names.items()}}
            sample["rss_mb"]["postgres (all)"] = round(sum(rss_mb(pid) for pid in pg()), 1)
            sample["postgres"] = postgres_activity(watch)
            samples.append(sample)
            print(json.dumps({k: v for k, v in sample.items() if k != "rss_mb"}), flush=True)
        watch.close()
        sent = json.loads(send.stdout.read())
        final = stats.query(stats_ep)
        deadline = time.monotonic() + 120
        while final["pending"] and time.monotonic() < deadline:  # the ring's tail is still being written
            time.sleep(0.5)
            final = stats.query(stats_ep)
        proc.terminate()
        proc.wait(300)
    finally:
        server.stop()

    warm = [x for x in samples if x["t"] >= 60] or samples
    last = [x for x in samples if x["t"] >= samples[-1]["t"] - 60]
    def latest(name: str) -> float:  # a process that already exited (the sender) reads 0 at the end
        return next((x["rss_mb"][name] for x in reversed(last) if x["rss_mb"][name]), 0.0)

    growth = {name: round(latest(name) - warm[0]["rss_mb"][name], 1) for name in samples[-1]["rss_mb"]}
    ring_last = sum(x["ring_used"] for x in last) / len(last)
    result = {"date": time.strftime("%Y-%m-%d"), "rate": rate, "minutes": a.minutes, "postgres_settings": settings,
              "sent": sent["events"],
              "sent_per_s": sent["events_per_s"], "persisted": final["persisted"], "invalid": final["invalid"],
              "p99_ms_overall": final["latency_ms"]["p99"], "rss_growth_mb_after_first_minute": growth,
              "ring_used_mean_last_minute": round(ring_last), "ring_capacity": samples[-1]["ring_capacity"],
              "spool_bytes_max": max(x["spool_bytes"] for x in samples),
              # stalls: runs of samples in which the front spilled to the spool (writers freed nothing for 0.5 s)
              "spool_episodes": sum(1 for prev, x in zip([{"spool_bytes": 0}] + samples, samples)
                                    if x["spool_bytes"] and not prev["spool_bytes"]),
              "checkpoints": samples[-1]["postgres"]["checkpoints"],
              "wal_bytes_per_event": round(samples[-1]["postgres"]["wal_mb"] * 2**20 / max(1, final["persisted"])),
              "samples": samples}
    a.out.mkdir(parents=True, exist_ok=True)
    suffix = "".join(f"-{k}-{v}" for k, v in settings.items())
    path = a.out / f"soak-{result['date']}-{round(rate)}{suffix}"
    path.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(result, path.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    print(f"wrote {path}.json and .png")
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [x["t"] / 60 for x in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for name in samples[0]["rss_mb"]:
        ax1.plot(t, [x["rss_mb"][name] for x in samples], label=name)
    ax1.set_ylabel("RSS, MiB")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=7, ncol=3)
    ax1.set_title(f"soak at {result['rate']:,.0f} events/s for {result['minutes']:g} min ({result['date']})", fontsize=10)
    ax2.plot(t, [x["ring_used"] for x in samples], label="ring_used (slots)")
    ax2.axhline(samples[0]["ring_capacity"], color="grey", ls=":", label="ring capacity")
    ax2.set_ylabel("ring slots")
    ax2.set_xlabel("minutes")
    ax3 = ax2.twinx()
    ax3.plot(t, [x["events_per_s"] for x in samples], color="green", alpha=0.6, label="events/s (right)")
    ax3.set_ylabel("events/s")
    ax3.set_ylim(bottom=0)
    ax2.legend(fontsize=7, loc="upper left")
    ax3.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
