"""The whole service as operators run it: real processes, sockets, signals and PostgreSQL."""

from __future__ import annotations

import json
import shutil
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


from .checker import identity_holds  # noqa: F401  (imported from here by the older test modules)


@pytest.mark.promise
def test_300_scales_x_50_events_are_stored_exactly_with_latest_states(service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    summary = Simulator(svc.bind, scales=300, rate=0, events=300 * 50, events_per_frame=100, start_ms=1_700_000_000_000).run()
    assert summary.events == 15_000
    s = svc.wait_for(lambda s: s["persisted"] == 15_000 and s["pending"] == 0)
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


@pytest.mark.promise
def test_resent_frames_are_duplicates_also_after_a_restart(service_factory, dsn, conn):
    run = dict(scales=30, rate=0, events=600, start_ms=1_700_000_000_000)
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    Simulator(svc.bind, **run).run()
    Simulator(svc.bind, **run).run()  # the same frames again
    s = svc.wait_for(lambda s: s["persisted"] + s["duplicates"] == 1200 and s["pending"] == 0)
    assert (s["persisted"], s["duplicates"]) == (600, 600) and identity_holds(s)
    assert svc.terminate() == 0
    svc = service_factory("--dsn", dsn, "--writers", "3")  # restarted, other lanes
    svc.wait_ready()
    Simulator(svc.bind, **run).run()
    # pending too: a writer counts a batch just before it releases its slots
    s = svc.wait_for(lambda s: s["duplicates"] == 600 and s["pending"] == 0)
    assert s["persisted"] == 0 and identity_holds(s)
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (600, 600)
    assert svc.terminate() == 0


def test_a_scale_written_by_both_writers_is_stored_once_with_its_latest_state(service_factory, dsn, conn):
    """A burst goes to the lanes by scale, a trickle to lane 0 whole: scale 1 in both lanes, taking turns."""
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()

    def event(scale: int, seq: int) -> dict:
        return {"scale_id": scale, "seq": seq, "ts": 1_700_000_000_000 + seq, "data_1": f"{scale}-{seq}"}

    svc.send(msgspec.msgpack.encode([event(s, n) for n in range(50) for s in range(1, 11)]))
    svc.wait_for(lambda s: s["persisted"] == 500)
    # single events of scales 1 and 2, and re-sends of scale 1's burst: 30 records, all into lane 0
    svc.send(*(msgspec.msgpack.encode(e) for n in range(50, 60) for e in (event(1, n), event(2, n), event(1, n - 50))))
    s = svc.wait_for(lambda s: s["persisted"] + s["duplicates"] == 530 and s["pending"] == 0)
    assert (s["persisted"], s["duplicates"]) == (520, 10) and identity_holds(s)
    assert all(w["batches"] > 0 for w in s["writers"])
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (520, 520)
    assert conn.execute("SELECT scale_id, seq, data_1->>'val' FROM scale_current_states WHERE scale_id <= 3 "
                        "ORDER BY 1").fetchall() == [(1, 59, "1-59"), (2, 59, "2-59"), (3, 49, "3-49")]
    assert conn.execute("SELECT scale_id, first_seq, last_seq FROM ingestor_claims WHERE scale_id <= 2 ORDER BY 1"
                        ).fetchall() == [(1, 0, 59), (2, 0, 59)]
    assert svc.terminate() == 0


@pytest.mark.promise
def test_invalid_frames_are_dead_lettered_and_the_counts_add_up(service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "1")
    svc.wait_ready()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(svc.bind)
    good = [{"scale_id": 5, "seq": i, "ts": 1_700_000_000_000 + i, "data_1": "1.5"} for i in range(3)]
    push.send(msgspec.msgpack.encode(good[0]))
    push.send_multipart([json.dumps(good[1]).encode(), b"\xc1garbage", json.dumps(good[2]).encode()])
    push.send(json.dumps([{"scale_id": 0, "seq": 1, "ts": 1_700_000_000_000},
                          {"scale_id": 6, "seq": 1, "ts": 1_700_000_000_000, "data_2": "x" * 70}]).encode())
    push.close(linger=5000)
    ctx.term()
    s = svc.wait_for(lambda s: s["received_events"] == 6 and s["persisted"] == 3)
    assert (s["received_frames"], s["invalid"], s["pending"]) == (5, 3, 0)
    assert identity_holds(s)
    letters = sorted((dl.kind, dl.scale_id) for _, dl in read(svc.dead_letter_dir))
    assert letters == [("invalid", 0), ("text_too_long", 6), ("undecodable", None)]
    assert conn.execute("SELECT array_agg(seq ORDER BY seq) FROM weighing_logs").fetchone()[0] == [0, 1, 2]
    assert svc.terminate() == 0


@pytest.mark.promise
def test_sigterm_writes_everything_already_accepted(service_factory, dsn, conn):
    # a long batch timeout keeps the accepted events in the ring until SIGTERM
    svc = service_factory("--dsn", dsn, "--writers", "2",
                          "--batch-timeout-ms", "60000", "--batch-size", "100000")
    svc.wait_ready()
    Simulator(svc.bind, scales=50, rate=0, events=5000, start_ms=1_700_000_000_000).run()
    # pending settles at 5000 (a refill from the spool counts its block twice for a moment: in the ring, and
    # in the front's share until the front publishes it)
    s = svc.wait_for(lambda s: s["received_events"] == 5000 and s["pending"] == 5000)
    assert s["persisted"] == 0
    assert svc.terminate(signal.SIGTERM) == 0
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (5000, 5000)
    assert "Drained: 5000 events persisted" in svc.output()


@pytest.mark.promise
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


@pytest.mark.promise
def test_main_job_runs_on_embedded_postgres_and_stops_it_leaving_nothing_behind(tmp_path):
    # not tmp_path: when the tests run as root the cluster runs as postgres, which cannot enter pytest's 0700 dirs
    data_dir = Path(tempfile.mkdtemp(prefix="ingestor-test-embedded-"))
    from tests.fix_service import free_port

    stats_ep = f"tcp://127.0.0.1:{free_port()}"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ingestor.cli", "run", "--data-dir", str(data_dir), "--simulate-scales", "30",
             "--simulate-rate", "300", "--run-seconds", "4", "--bind", f"tcp://127.0.0.1:{free_port()}",
             "--ack-bind", f"tcp://127.0.0.1:{free_port()}", "--http-bind", f"127.0.0.1:{free_port()}",
             "--stats-endpoint", stats_ep],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Using embedded PostgreSQL: host=127.0.0.1" in proc.stdout
        assert "Final counts:" in proc.stderr and "Embedded PostgreSQL stopped" in proc.stderr
        assert "[BATCH]" not in proc.stderr  # per batch at DEBUG: ~25 lines a second would flood the journal
        assert not (data_dir / "pg" / "postmaster.pid").exists()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert not data_dir.exists()


def malformed_frames(n: int, now_ms: int):
    """``n`` frames that each hold exactly one invalid event, of every kind in turn: (frame, kind)."""
    import random

    rng = random.Random(42)
    good = {"scale_id": 9, "seq": 1, "ts": now_ms - 1000, "data_1": "1.0"}
    packed = msgspec.msgpack.encode(good)
    makers = [
        (lambda i: b"\xc1" + rng.randbytes(rng.randrange(0, 64)), "undecodable"),  # 0xc1: never valid MessagePack
        (lambda i: packed[: rng.randrange(1, len(packed))], "undecodable"),
        (lambda i: json.dumps({**good, "scale_id": "nine"}).encode(), "invalid"),
        (lambda i: msgspec.msgpack.encode({**good, "data_2": float("nan")}), "not_finite"),
        (lambda i: msgspec.msgpack.encode({**good, "data_3": "é" * 40}), "text_too_long"),
        (lambda i: json.dumps({**good, "ts": now_ms + 2 * 86_400_000}).encode(), "future_ts"),
        (lambda i: json.dumps({"scale_id": 9, "ts": now_ms}).encode(), "missing_field"),
        (lambda i: packed.replace(b"\xa31.0", b"\xa3\xff\xfe\xfd"), "undecodable"),  # bad UTF-8
        (lambda i: msgspec.msgpack.encode({**good, "scale_id": 2**40}), "invalid"),
    ]
    for i in range(n):
        if i % 5000 == 4999:
            yield b"[" + b" " * 5000 + b"]", "frame_too_large"
            continue
        make, kind = makers[i % len(makers)]
        yield make(i), kind


def test_100k_malformed_frames_mixed_with_valid_events_leave_the_service_up_and_exact(service_factory, dsn, conn):
    import collections

    svc = service_factory("--dsn", dsn, "--writers", "2", "--max-frame-bytes", "4096")
    svc.wait_ready()
    now_ms = time.time_ns() // 1_000_000
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(svc.bind)
    expected = collections.Counter()
    valid = 0
    for i, (frame, kind) in enumerate(malformed_frames(100_000, now_ms)):
        push.send(frame)
        expected[kind] += 1
        if i % 500 == 0:  # valid events in between: 100 per frame, 20,000 in all
            events = [{"scale_id": s % 40 + 1, "seq": s, "ts": now_ms - 5000, "data_1": s} for s in range(valid, valid + 100)]
            push.send(msgspec.msgpack.encode(events))
            valid += 100
    push.close(linger=30_000)
    ctx.term()
    s = svc.wait_for(lambda s: s["received_events"] == 100_000 + valid and s["pending"] == 0, timeout_s=180)
    assert s["status"] == "running" and all(w["alive"] for w in s["writers"])
    assert (s["invalid"], s["persisted"], s["duplicates"], s["failed"]) == (100_000, valid, 0, 0)
    assert identity_holds(s) and s["refused_frames"] == expected["frame_too_large"] == 20
    assert collections.Counter(dl.kind for _, dl in read(svc.dead_letter_dir)) == expected
    assert conn.execute("SELECT count(*), count(DISTINCT seq) FROM weighing_logs").fetchone() == (valid, valid)
    assert svc.terminate() == 0


def test_out_of_order_event_is_stored_once_and_never_overwrites_a_newer_state(service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(svc.bind)
    day_ms = 86_400_000
    newer = {"scale_id": 4, "seq": 10, "ts": 1_700_000_000_000, "data_1": "new"}
    late = {"scale_id": 4, "seq": 9, "ts": 1_700_000_000_000 - 3 * day_ms, "data_1": "late"}  # days older
    push.send(msgspec.msgpack.encode(newer))
    svc.wait_for(lambda s: s["persisted"] == 1)
    push.send(msgspec.msgpack.encode(late))  # never stored before: stored, state untouched
    svc.wait_for(lambda s: s["persisted"] == 2)
    push.send(msgspec.msgpack.encode([late, newer]))  # both again: duplicates
    s = svc.wait_for(lambda s: s["duplicates"] == 2 and s["pending"] == 0)
    push.close(linger=5000)
    ctx.term()
    assert identity_holds(s) and s["persisted"] == 2
    assert conn.execute("SELECT array_agg(seq ORDER BY seq) FROM weighing_logs").fetchone()[0] == [9, 10]
    assert conn.execute("SELECT seq, data_1->>'val' FROM scale_current_states").fetchall() == [(10, "new")]
    assert svc.terminate() == 0


@pytest.mark.parametrize("bad", [rb'"\ud800"', rb'"\udc00\ud800"'])
def test_lone_surrogate_in_one_event_invalidates_only_that_event_of_its_array(service_factory, dsn, conn, bad):
    # issue 10 #5: msgspec refused the whole JSON array; it was dead-lettered as one event
    svc = service_factory("--dsn", dsn, "--writers", "1")
    svc.wait_ready()
    good = [b'{"scale_id": %d, "seq": 1, "ts": 1700000000000, "data_1": "ok"}' % s for s in (1, 3)]
    svc.send(b"[" + good[0] + b', {"scale_id": 2, "seq": 1, "ts": 1700000000000, "data_1": ' + bad + b"}, "
             + good[1] + b"]")
    s = svc.wait_for(lambda s: s["received_events"] == 3 and s["pending"] == 0)
    assert identity_holds(s) and (s["persisted"], s["invalid"]) == (2, 1)
    assert [r[0] for r in conn.execute("SELECT scale_id FROM weighing_logs ORDER BY 1")] == [1, 3]
    (letter,) = [letter for _, letter in read(svc.dead_letter_dir)]
    assert letter.index == 1 and letter.kind == "undecodable" and bad.decode() in letter.frame
    assert svc.terminate() == 0


def shared_memory_files() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(("psm_", "sem.mp-"))}


def test_next_start_removes_the_shared_memory_of_a_sigkilled_tree(service_factory, dsn, tmp_path):
    # issue 10 #8: ~24 MB per start stayed in /dev/shm after kill -9 of the whole tree
    from ingestor import leftovers

    def owned_files() -> set[str]:
        owned = msgspec.json.decode((tmp_path / "data" / leftovers.RECORD).read_bytes(), type=leftovers.Owned)
        return {n.lstrip("/") for n in owned.shared_memory} | {"sem." + n.lstrip("/") for n in owned.semaphores}

    left_by_killed: set[str] = set()
    for _ in range(5):
        svc = service_factory("--dsn", dsn, "--writers", "2", "--ack-bind", "off")
        svc.wait_ready()
        mine = owned_files()
        assert len(mine) == 3 + 4 and mine <= shared_memory_files()  # ring, counters, acks; 2 semaphores a lane
        left_by_killed |= mine
        svc.kill_tree()
    live = service_factory("--dsn", dsn, "--writers", "2", "--ack-bind", "off")
    live.wait_ready()
    assert not (left_by_killed & shared_memory_files()), "a killed tree's shared memory survived the next start"
    assert "left by a dead ingestor" in live.output()
    mine = owned_files()
    assert live.terminate() == 0
    assert not (mine & shared_memory_files()) and not (tmp_path / "data" / leftovers.RECORD).exists()
