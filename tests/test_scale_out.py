"""Several ingestors, one database (docs/operations.md#scaling-out-and-failover): each keeps its own recovery state."""

from __future__ import annotations

import os
import re
import signal
import threading
import urllib.request

import msgspec
import pytest

from ingestor import failpoints, leftovers
from ingestor.client import Sender

from .checker import identity_holds

pytestmark = pytest.mark.slow
START_MS = 1_700_000_000_000
MESSAGES, PER_MESSAGE, SCALES = 40, 50, 20


def messages(first_scale: int) -> list[bytes]:
    """MESSAGES frames of PER_MESSAGE events over SCALES scales from ``first_scale``, each seq +1 per scale."""
    seq = dict.fromkeys(range(first_scale, first_scale + SCALES), 0)
    out = []
    for m in range(MESSAGES):
        events = []
        for k in range(PER_MESSAGE):
            scale = first_scale + (m * PER_MESSAGE + k) % SCALES
            seq[scale] += 1
            events.append({"scale_id": scale, "seq": seq[scale], "ts": START_MS + seq[scale], "data_1": f"{seq[scale]}"})
        out.append(msgspec.msgpack.encode(events))
    return out


def test_two_instances_with_writers_killed_after_commit_each_count_their_own_events_once(
        service_factory, dsn, conn, tmp_path):
    # Both instances' lane 0 commits; each instance's first committing writer dies between COMMIT
    # and releasing its records. Its successor must find *its* checkpoint, not the other's.
    services, replies = {}, {}
    for name in ("plant-a", "plant-b"):
        state = tmp_path / f"failpoints-{name}"
        state.mkdir()
        services[name] = service_factory("--dsn", dsn, "--writers", "2", box=name, env={
            "INGESTOR_INSTANCE": name, failpoints.ENV: "writer.after_commit=1*kill",
            failpoints.STATE_ENV: str(state)})
    for svc in services.values():
        svc.wait_ready()

    def send(name: str, first_scale: int) -> None:
        with Sender(services[name].ack_bind, acked=True, resend_after_s=3) as sender:
            for i, frame in enumerate(messages(first_scale)):
                sender.send_frames([frame], token=f"{name}-{i}".encode())
            replies[name] = sender.wait(120)

    threads = [threading.Thread(target=send, args=args) for args in (("plant-a", 1), ("plant-b", 101))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    total = MESSAGES * PER_MESSAGE
    for name, svc in services.items():
        s = svc.wait_for(lambda s: s["pending"] == 0 and all(w["alive"] for w in s["writers"]))
        assert failpoints.fired("writer.after_commit", tmp_path / f"failpoints-{name}") == 1, name
        assert sum(w["restarts"] for w in s["writers"]) == 1, name
        # every event of this instance persisted once by it: a successor that took the other
        # instance's checkpoint would write its committed batch again and count it as duplicates
        assert s["persisted"] == total and s["failed"] == 0 and identity_holds(s), (name, s)
        # Duplicates come only from re-sent copies: a message the dead writer committed is answered
        # only once re-sent ("already stored"); a copy re-sent while its first was still in the ring
        # is counted by the service, but this Sender keeps the first answer only.
        resent = s["received_frames"] - MESSAGES
        answered_duplicates = sum(r.duplicates for r in replies[name].values())
        assert answered_duplicates <= s["duplicates"] <= resent * PER_MESSAGE, (name, resent, s)
        assert len(replies[name]) == MESSAGES
        assert all(r.accepted + r.duplicates == PER_MESSAGE and r.error is None for r in replies[name].values()), name
        assert "committed before the last writer died" in svc.output()
        # the instance's name is in the stats, /metrics and its log lines
        assert s["instance"] == name
        metrics = urllib.request.urlopen(f"http://{svc.http}/metrics", timeout=10).read().decode()
        assert f'ingestor_info{{ingestor_instance="{name}"}} 1.0' in metrics
        assert re.search(rf" {name}/writer-\d\[", svc.output())  # a writer's line (per-batch lines are at DEBUG)
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() \
        == (2 * total, 2 * total)
    # each instance's lane 0 has its own row (lane 1 only when a frame was split: placement's trickle rule)
    assert conn.execute("SELECT instance FROM ingestor_checkpoints WHERE lane = 0 ORDER BY 1").fetchall() \
        == [("plant-a",), ("plant-b",)]
    for svc in services.values():
        assert svc.terminate() == 0


@pytest.mark.promise
def test_a_sender_on_two_instances_loses_no_acknowledged_event_when_one_is_sigkilled_mid_stream(
        service_factory, dsn, conn):
    # Both instances get messages of the same 20 scales (ZeroMQ spreads them), so their writers
    # claim the same scales at once: one lock order, no deadlock. One whole process tree is
    # SIGKILLed mid-stream: what it held unanswered is re-sent, and the other stores it.
    a = service_factory("--dsn", dsn, "--writers", "2", box="plant-a", env={"INGESTOR_INSTANCE": "plant-a"})
    b = service_factory("--dsn", dsn, "--writers", "2", box="plant-b", env={"INGESTOR_INSTANCE": "plant-b"})
    a.wait_ready()
    for w in b.wait_ready()["writers"]:  # frozen: what b takes stays unanswered until it dies
        os.kill(w["pid"], signal.SIGSTOP)
    frames = messages(1)  # 40 messages of 50 events, seqs +1 per scale
    with Sender([a.ack_bind, b.ack_bind], acked=True, resend_after_s=2) as sender:
        for i, frame in enumerate(frames):
            sender.send_frames([frame], token=b"m%d" % i)
            sender.poll(0.02)  # paced: both connections are up before the first half is sent
            if i == len(frames) // 2:
                b.kill_tree()
                leftovers.remove_stale(b.data_dir)  # what b's next start would remove
        replies = sender.wait(120)
        assert sender.messages_resent > 0  # b died holding unanswered messages
    assert len(replies) == MESSAGES
    assert all(r.accepted + r.duplicates == PER_MESSAGE and r.error is None for r in replies.values())
    s = a.wait_for(lambda s: s["pending"] == 0)
    assert s["acked_messages"] > 0 and identity_holds(s), s
    total = MESSAGES * PER_MESSAGE
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() \
        == (total, total)
    # each scale's latest state is its greatest seq
    assert conn.execute("SELECT count(*) FROM scale_current_states s JOIN (SELECT scale_id, max(seq) m FROM "
                        "weighing_logs GROUP BY 1) h USING (scale_id) WHERE s.seq = h.m").fetchone()[0] == SCALES
    assert "40P01" not in a.output() and "deadlock" not in a.output().lower()
    assert a.terminate() == 0
