"""Random fault schedules against the real service, seeded and reproducible (FoundationDB's BUGGIFY idea).

    python bench/chaos.py --minutes 60            # runs until the time is up
    python bench/chaos.py --seed 1234 --runs 1    # replays one schedule exactly

Each run draws, from its seed, one to three failpoints of
``ingestor.failpoints.FAILPOINTS`` with random actions and counts, whether
PostgreSQL goes down mid-stream (and for how long), how many writers are
SIGKILLed at random moments, and whether the service itself is stopped
mid-stream (SIGTERM, SIGQUIT or a SIGKILL of the whole tree) and started
again on the same spool; an acked sender (re-sending what gets no reply)
sends the plant's events, a few refused by a CHECK constraint and a few
invalid. Afterwards ``tests/checker.py`` must hold. A failing run prints its
seed and the service's log and the script exits 1; the schedule replays
with ``--seed``. Timing (which batch a kill lands in) is not seeded: a
replay re-draws the same faults, not the same interleaving.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402
import zmq  # noqa: E402
from throughput import fresh_db, throwaway_server  # noqa: E402

from ingestor import failpoints, leftovers  # noqa: E402
from tests.checker import Sent, check, plant_messages, send_acked  # noqa: E402
from tests.fix_service import Service  # noqa: E402

COUNTED = {"kill": (1, 2), "enospc": (1, 6), "eio": (1, 6), "disconnect": (1, 4), "sleep": (1, 4)}


def schedule(rng: random.Random) -> dict:
    """The faults of one run, all drawn from ``rng``."""
    names = rng.sample(sorted(failpoints.FAILPOINTS), rng.randint(1, 3))
    armed = []
    for name in names:
        action = rng.choice(failpoints.FAILPOINTS[name][0])
        count = rng.randint(*COUNTED[action])
        task = f"sleep({rng.choice((50, 300, 900))})" if action == "sleep" else action
        armed.append(f"{name}={count}*{task}")
    if not any(a.startswith("writer.dedup=") for a in armed) and rng.random() < 0.5:
        armed.append("writer.dedup=3*sleep(800)")  # make the front spill to the spool
    return {
        "failpoints": ";".join(armed),
        "outage_s": rng.choice((0, 0, 2, 6)),
        "writer_kills": rng.choice((0, 0, 1, 3)),
        "messages": rng.choice((20, 40, 80)),
        # a stop in the middle, then a restart on the same spool and data directory
        "stop": rng.choice(("none", "none", "SIGTERM", "SIGQUIT", "SIGKILL tree")),
    }


def one_run(seed: int, server, workdir: Path) -> tuple[bool, str]:
    rng = random.Random(seed)
    plan = schedule(rng)
    dsn = fresh_db(server, f"chaos_{seed % 10**8}")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("ALTER TABLE weighing_logs ADD CONSTRAINT no666 CHECK (scale_id <> 666)")
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{seed}-", dir=workdir))
    state = run_dir / "failpoints"
    state.mkdir()
    env = {failpoints.ENV: plan["failpoints"], failpoints.STATE_ENV: str(state)}
    args = ["--dsn", dsn, "--writers", "2", "--ring-capacity", "512", "--batch-size", "200",
            "--batch-timeout-ms", "20"]
    svc = Service(args, run_dir, env)
    logs: list[str] = []
    try:
        svc.wait_ready()
        sent = Sent()
        messages = plant_messages(sent, messages=plan["messages"])
        faults = threading.Thread(target=inject, args=(rng, plan, svc, server), daemon=True)
        faults.start()
        if plan["stop"] != "none":
            svc = stop_midstream(rng, plan["stop"], svc, messages, args, run_dir, env, logs)
        send_acked(svc.ack_bind, messages, sent, deadline_s=240)
        faults.join()
        s = svc.wait_for(lambda s: s["pending"] == 0 and all(w["alive"] for w in s["writers"]), timeout_s=120)
        summary = check(dsn, s, sent, svc.dead_letter_dir, "\n".join(logs + [svc.output()]))
        killers = [n for n in ("supervisor.drain", "supervisor.spool_leftovers") if f"{n}=" in plan["failpoints"]]
        before = {n: failpoints.fired(n, state) for n in killers}
        code = svc.terminate()
        if code != 0:  # only an armed supervisor failpoint firing at this very stop may make it so
            assert any(failpoints.fired(n, state) > before[n] for n in killers), f"graceful stop exited {code}"
            leftovers.remove_stale(run_dir / "data")  # a SIGKILLed supervisor unlinked nothing
        return True, f"seed {seed}: {plan} -> {summary}"
    except Exception:  # noqa: BLE001 - any failure is reported with its seed
        return False, (f"seed {seed}: {plan} FAILED\n{traceback.format_exc()}\n--- log ---\n"
                       f"{chr(10).join(logs + [svc.output()])[-30000:]}")
    finally:
        svc.close()
        if not server_is_up(server):
            server.start()


def stop_midstream(rng: random.Random, how: str, svc: Service, messages: list, args: list, run_dir: Path,
                   env: dict, logs: list[str]) -> Service:
    """Send every message once, stop the service ``how`` at a random moment, start it again; return it.

    The acked sender then re-sends everything to the new service: what the
    first one acknowledged or kept (spool) is found duplicate, the rest stored.
    """
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as dealer:
        dealer.connect(svc.ack_bind)
        for m in messages:
            dealer.send_multipart(m)
        time.sleep(rng.uniform(0.05, 2.0))
        if how == "SIGKILL tree":
            svc.kill_tree()
        else:
            svc.terminate(signal.SIGTERM if how == "SIGTERM" else signal.SIGQUIT, timeout_s=120)
        dealer.close(linger=0)
    logs.append(svc.output())
    svc.close()
    again = Service(args, run_dir, env)
    again.wait_ready()
    return again


def inject(rng: random.Random, plan: dict, svc: Service, server) -> None:
    """Writer kills at random moments, and a PostgreSQL outage, as the plan says."""
    for _ in range(plan["writer_kills"]):
        time.sleep(rng.uniform(0.1, 1.5))
        try:
            alive = [w["pid"] for w in svc.stats()["writers"] if w["alive"]]
            if alive:
                os.kill(rng.choice(alive), signal.SIGKILL)
        except Exception:  # noqa: BLE001 - the service may be between states
            pass
    if plan["outage_s"]:
        time.sleep(rng.uniform(0.1, 1.0))
        server.stop("immediate")
        time.sleep(plan["outage_s"])
        server.start()


def server_is_up(server) -> bool:
    try:
        psycopg.connect(server.dsn, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="run schedules until this much time has passed")
    p.add_argument("--runs", type=int, default=0, help="stop after this many runs (0: by --minutes only)")
    p.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock, printed)")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    print(f"chaos: first seed {seed}", flush=True)
    # synchronous_commit stays on: an immediate stop is a crash
    workdir, server = throwaway_server("chaos", {"fsync": "off", "full_page_writes": "off"})
    end = time.monotonic() + args.minutes * 60
    runs = failures = 0
    started = time.monotonic()
    try:
        while time.monotonic() < end and (not args.runs or runs < args.runs):
            ok, report = one_run(seed + runs, server, workdir)
            runs += 1
            failures += not ok
            print(report, flush=True)
    finally:
        server.stop("immediate")
    print(f"chaos: {runs} runs in {(time.monotonic() - started) / 60:.1f} min, {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
