#!/usr/bin/env python3
"""The tuning profiles of examples/profiles/, measured side by side with the defaults.

    python bench/profiles.py --events 200000 --paced-seconds 30

For the defaults and each ``examples/profiles/*.toml`` (given to ``ingestor
run --config``), on one throwaway PostgreSQL with default durability:

- full speed: ``--events`` events from a separate sender (bench/loadgen.py)
  as fast as the service takes them; events/s = events / (first send .. last
  commit), and its ratio to a ``COPY`` of the same rows measured in this run;
- paced: 300 events/s (the plant's rate) for ``--paced-seconds``;
  receive-to-commit latency p50/p99 from the service's histogram.

Each run samples the ingestor's processes (supervisor, front, writers) with
psutil: CPU seconds and the sum of their peak PSS (shared pages divided
among the processes sharing them: the memory the ingestor really takes). Prints a Markdown table
and writes ``bench/results/profiles-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import RESULTS, machine, run_ingestor, save_results  # noqa: E402
from throughput import copy_baseline, fresh_db, throwaway_server  # noqa: E402

PROFILES = ROOT / "examples" / "profiles"
INGESTOR_PROCS = ("supervisor", "front")


def ingestor_figures(r: dict) -> tuple[float, float]:
    """(CPU seconds, summed peak PSS in MiB) of the ingestor's own processes in run ``r``."""
    own = {n: v for n, v in r["processes"].items() if n in INGESTOR_PROCS or n.startswith("writer")}
    return round(sum(v["cpu_s"] for v in own.values()), 2), round(sum(v["peak_pss_mb"] for v in own.values()), 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--paced-seconds", type=float, default=30.0)
    p.add_argument("--profiles", nargs="*", type=Path, default=sorted(PROFILES.glob("*.toml")))
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()

    workdir, server = throwaway_server("profiles")
    date = time.strftime("%Y-%m-%d")
    results: dict = {"machine": machine(server), "date": date, "events": a.events, "profiles": {}}
    try:
        seconds = copy_baseline(server, fresh_db(server, "prof_copy"), a.events)
        results["copy_events_per_s"] = copy_rate = round(a.events / seconds)
        print(f"COPY: {copy_rate:,} events/s", flush=True)
        for path in [None, *a.profiles]:
            name = "defaults" if path is None else path.stem
            extra = [] if path is None else ["--config", str(path)]
            key = name.replace("-", "_")
            full = run_ingestor(server, workdir, f"prof_{key}_full", a.events, 0, 0, extra, pss=True)
            paced = run_ingestor(server, workdir, f"prof_{key}_paced", 0, 300, a.paced_seconds, extra, pss=True)
            results["profiles"][name] = {"file": None if path is None else str(path.relative_to(ROOT)),
                                         "full": full, "paced": paced}
            print(f"{name}: {full['events_per_s']:,} events/s; at 300 events/s p50 {paced['p50_ms']} ms, "
                  f"p99 {paced['p99_ms']} ms", flush=True)
    finally:
        server.stop()

    lines = [f"{results['machine']}; {a.events:,} events at full speed, 300 events/s for {a.paced_seconds:g} s; {date}; "
             f"COPY {copy_rate:,} events/s", "",
             "| profile | full speed events/s | × COPY | full speed p99 ms | 300 ev/s p50 ms | 300 ev/s p99 ms "
             "| ingestor CPU s, full speed | ingestor memory MiB, PSS (full / paced) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["profiles"].items():
        full, paced = r["full"], r["paced"]
        cpu, rss = ingestor_figures(full)
        _, paced_rss = ingestor_figures(paced)
        lines.append(f"| {name} | {full['events_per_s']:,} | {full['events_per_s'] / copy_rate:.2f} | {full['p99_ms']} "
                     f"| {paced['p50_ms']} | {paced['p99_ms']} | {cpu} | {rss} / {paced_rss} |")
    for r in results["profiles"].values():  # the CDF data is in compare's files; keep these small
        for run in (r["full"], r["paced"]):
            run.pop("latency_histogram", None)
    save_results(a.out, f"profiles-{date}", results, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
