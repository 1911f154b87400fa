"""The whole service as operators run it: real processes, sockets, signals and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import pytest
import zmq

from ingestor.deadletter import read
from ingestor.simulator import Simulator

pytestmark = pytest.mark.slow


def identity_holds(s: dict) -> bool:
    return s["received_events"] == s["invalid"] + s["duplicates"] + s["persisted"] + s["failed"] + s["pending"]


def test_300_scales_x_50_events_are_stored_exactly_with_latest_states(service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    summary = Simulator(svc.bind, scales=300, rate=0, events=300 * 50, events_per_frame=100, start_ms=1_700_000_000_000).run()
    assert summary.events == 15_000
    s = svc.wait_for(lambda s: s["persisted"] == 15_000)
    assert identity_holds(s) and s["invalid"] == 0 and s["pending"] == 0
    assert s["received_frames"] == summary.frames
    rows = conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone()
    assert rows == (15_000, 15_000)
    per_scale = conn.execute("SELECT count(DISTINCT scale_id), min(n), max(n) FROM "
                             "(SELECT scale_id, count(*) n FROM weighing_logs GROUP BY 1) x").fetchone()
    assert per_scale == (300, 50, 50)
    states = conn.execute("SELECT count(*), min(seq), max(seq) FROM scale_current_states").fetchone()
    assert states == (300, 49, 49)
    assert svc.terminate() == 0


def test_resent_frames_are_duplicates_also_after_a_restart(service_factory, dsn, conn):
    run = dict(scales=30, rate=0, events=600, start_ms=1_700_000_000_000)
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    Simulator(svc.bind, **run).run()
    Simulator(svc.bind, **run).run()  # the same frames again
    s = svc.wait_for(lambda s: s["persisted"] + s["duplicates"] == 1200)
    assert (s["persisted"], s["duplicates"]) == (600, 600) and identity_holds(s)
    assert svc.terminate() == 0
    svc = service_factory("--dsn", dsn, "--writers", "3")  # restarted, other lanes
    svc.wait_ready()
    Simulator(svc.bind, **run).run()
    s = svc.wait_for(lambda s: s["duplicates"] == 600)
    assert s["persisted"] == 0 and identity_holds(s)
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (600, 600)
    assert svc.terminate() == 0


def test_invalid_frames_are_dead_lettered_and_the_counts_add_up(service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "1")
    svc.wait_ready()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(svc.bind)
    good = [{"scale_id": 5, "seq": i, "ts": 1_700_000_000_000 + i, "data_1": "1.5"} for i in range(3)]
    push.send(msgspec.msgpack.encode(good[0]))
    push.send_multipart([json.dumps(good[1]).encode(), b"\xc1garbage", json.dumps(good[2]).encode()])
    push.send(json.dumps([{"scale_id": 0, "seq": 1, "ts": 1}, {"scale_id": 6, "seq": 1, "ts": 1, "data_2": "x" * 70}]).encode())
    push.close(linger=5000)
    ctx.term()
    s = svc.wait_for(lambda s: s["received_events"] == 6 and s["persisted"] == 3)
    assert (s["received_frames"], s["invalid"], s["pending"]) == (5, 3, 0)
    assert identity_holds(s)
    letters = sorted((dl.kind, dl.scale_id) for _, dl in read(svc.dead_letter_dir))
    assert letters == [("invalid", 0), ("text_too_long", 6), ("undecodable", None)]
    assert conn.execute("SELECT array_agg(seq ORDER BY seq) FROM weighing_logs").fetchone()[0] == [0, 1, 2]
    assert svc.terminate() == 0


def test_sigterm_writes_everything_already_accepted(service_factory, dsn, conn):
    # a long batch timeout keeps the accepted events in the ring until SIGTERM
    svc = service_factory("--dsn", dsn, "--writers", "2",
                          "--batch-timeout-ms", "60000", "--batch-size", "100000")
    svc.wait_ready()
    Simulator(svc.bind, scales=50, rate=0, events=5000, start_ms=1_700_000_000_000).run()
    s = svc.wait_for(lambda s: s["received_events"] == 5000)
    assert s["persisted"] == 0 and s["pending"] == 5000
    assert svc.terminate(signal.SIGTERM) == 0
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (5000, 5000)
    assert "Drained: 5000 events persisted" in svc.output()


def test_killed_writer_is_restarted_and_nothing_is_lost(service_factory, dsn, conn):
    import os

    svc = service_factory("--dsn", dsn, "--writers", "2")
    s = svc.wait_ready()
    os.kill(s["writers"][0]["pid"], signal.SIGKILL)
    Simulator(svc.bind, scales=20, rate=0, events=2000, start_ms=1_700_000_000_000).run()
    s = svc.wait_for(lambda s: s["persisted"] == 2000 and all(w["alive"] for w in s["writers"]))
    assert s["writers"][0]["restarts"] == 1
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (2000, 2000)
    assert "was killed by SIGKILL" in svc.output()
    assert svc.terminate() == 0


def test_main_job_runs_on_embedded_postgres_and_stops_it(tmp_path):
    data_dir = Path(tempfile.mkdtemp(prefix="ingestor-test-embedded-"))
    from tests.fix_service import free_port

    stats_ep = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "ingestor.cli", "run", "--data-dir", str(data_dir), "--simulate-scales", "30",
         "--simulate-rate", "300", "--run-seconds", "4", "--bind", f"tcp://127.0.0.1:{free_port()}",
         "--ack-bind", f"tcp://127.0.0.1:{free_port()}",
         "--stats-endpoint", stats_ep],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Using embedded PostgreSQL: host=127.0.0.1" in proc.stdout
    assert "[BATCH] Persisted" in proc.stderr and "Embedded PostgreSQL stopped" in proc.stderr
    assert not (data_dir / "pg" / "postmaster.pid").exists()
