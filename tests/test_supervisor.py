"""The supervisor's documented behaviour, with real processes and real signals (docs/operations.md#signals).

Writers are held still with a failpoint (``writer.dedup=sleep``) so the ring
holds events at the moment a signal arrives.
"""

from __future__ import annotations

import os
import re
import signal
import time

import msgspec
import psycopg
import pytest
import zmq

from ingestor import failpoints

from .checker import START_MS, identity_holds

pytestmark = pytest.mark.slow

STALLED = "writer.dedup=2*sleep(60000)"  # each of the two writers stalls on its first batch


def frames(scales: range, seqs: range) -> list[bytes]:
    return [msgspec.msgpack.encode([{"scale_id": s, "seq": q, "ts": START_MS + q} for q in seqs]) for s in scales]


def stalled_service(service_factory, dsn, tmp_path, *args):
    state = tmp_path / "fp"
    state.mkdir(exist_ok=True)
    return service_factory("--dsn", dsn, "--writers", "2", *args,
                           env={failpoints.ENV: STALLED, failpoints.STATE_ENV: str(state)})


@pytest.mark.parametrize("how", ["SIGQUIT", "second SIGTERM"])
def test_immediate_stop_kills_the_children_and_the_next_start_replays_the_ring(service_factory, dsn, tmp_path, how):
    svc = stalled_service(service_factory, dsn, tmp_path)
    svc.wait_ready()
    svc.send(*frames(range(1, 11), range(100)))
    svc.wait_for(lambda s: s["received_events"] == 1000 and s["ring_used"] == 1000)
    started = time.monotonic()
    if how == "SIGQUIT":
        code = svc.terminate(signal.SIGQUIT, timeout_s=30)
    else:
        svc.proc.send_signal(signal.SIGTERM)
        svc.wait_for(lambda s: s["status"] == "draining")
        code = svc.terminate(signal.SIGTERM, timeout_s=30)
    assert code == 1 and time.monotonic() - started < 10
    assert "stopping immediately" in svc.output() and "Spooled 1000 events left in the ring" in svc.output()
    again = service_factory("--dsn", dsn, "--writers", "2")
    again.wait_ready()
    s = again.wait_for(lambda s: s["persisted"] == 1000 and s["pending"] == 0)
    assert s["replayed_events"] == 1000 and identity_holds(s) and "Replayed 1000 events from spool" in again.output()
    assert again.terminate() == 0


@pytest.mark.promise
def test_whole_tree_sigkill_keeps_the_spool_and_replays_it_before_new_frames(service_factory, dsn, tmp_path):
    svc = stalled_service(service_factory, dsn, tmp_path, "--ring-capacity", "512")
    svc.wait_ready()
    svc.send(*frames(range(1, 11), range(300)))  # 3,000 events: 512 in the ring, the rest spilled
    before = svc.wait_for(lambda s: s["received_events"] == 3000 and s["pending"] == 3000 and s["spool_events"] > 0)
    svc.kill_tree()
    again = service_factory("--dsn", dsn, "--writers", "2")
    again.wait_ready()
    again.send(*frames(range(1, 11), range(300, 310)))  # new frames for the same scales, right away
    s = again.wait_for(lambda s: s["pending"] == 0 and s["persisted"] >= before["spool_events"] + 100)
    assert s["replayed_events"] >= before["spool_events"] and identity_holds(s)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT scale_id, seq, id FROM weighing_logs").fetchall()
    assert len(rows) == len({(r[0], r[1]) for r in rows}) == s["persisted"]
    # docs/PROTOCOL.md §4 fire-and-forget: the ring (shared memory) dies with the tree, the spool does not
    spooled = {(sc, q) for sc, q, _ in rows if q < 300}
    assert len(spooled) >= before["spool_events"]
    replayed_scales = 0
    for scale in range(1, 11):  # the replayed (older) events went before the new frames' events
        ids = {q: i for sc, q, i in rows if sc == scale}
        older = [i for q, i in ids.items() if q < 300]  # none when all of a scale's were in the ring
        if older:
            replayed_scales += 1
            assert max(older) < min(i for q, i in ids.items() if q >= 300)
    assert replayed_scales > 0
    assert again.terminate() == 0


def test_a_child_that_keeps_dying_is_restarted_with_a_doubling_backoff(service_factory, dsn):
    svc = service_factory("--dsn", dsn, "--writers", "1")
    svc.wait_ready()
    for restarts in range(1, 4):
        pid = svc.stats()["writers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        svc.wait_for(lambda s: s["writers"][0]["alive"] and s["writers"][0]["pid"] != pid, timeout_s=30)  # noqa: B023
        assert svc.stats()["writers"][0]["restarts"] == restarts
    delays = re.findall(r"Restarting writer-0 in ([\d.]+) s \(restart (\d)\)", svc.output())
    assert delays == [("0.5", "1"), ("1.0", "2"), ("2.0", "3")]
    assert "writer-0 (pid" in svc.output() and "was killed by SIGKILL" in svc.output()
    assert svc.terminate() == 0


def test_a_child_that_cannot_boot_halts_the_service_with_the_reason(service_factory, dsn):
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as taken:
        svc = service_factory("--dsn", dsn, "--writers", "1")
        taken.bind(svc.bind)  # the service's PULL endpoint is in use already
        code = svc.proc.wait(60)
        taken.close(linger=0)
    out = svc.output()
    assert code == 1 and "Cannot boot: cannot bind" in out and "Halting: front could not boot (exit code 3)" in out
    assert out.count("Restarting front") == 0


def test_a_drain_longer_than_drain_seconds_keeps_the_rest_in_the_spool_and_exits_0(service_factory, dsn, tmp_path):
    svc = stalled_service(service_factory, dsn, tmp_path, "--drain-seconds", "3")
    svc.wait_ready()
    svc.send(*frames(range(1, 5), range(100)))
    svc.wait_for(lambda s: s["ring_used"] == 400)
    started = time.monotonic()
    assert svc.terminate(signal.SIGTERM, timeout_s=30) == 0
    assert 3 <= time.monotonic() - started < 15
    out = svc.output()
    assert "writers did not drain within 3 s" in out and "Spooled 400 events left in the ring" in out
    again = service_factory("--dsn", dsn, "--writers", "2")
    again.wait_ready()
    s = again.wait_for(lambda s: s["persisted"] == 400 and s["pending"] == 0)
    assert s["replayed_events"] == 400 and identity_holds(s)
    assert again.terminate() == 0
