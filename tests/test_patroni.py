"""Failover the way plants run it: two PostgreSQL 15 nodes managed by Patroni with etcd (tests/fix_patroni.py).

The service runs on a multi-host DSN with ``target_session_attrs=read-write`` and is never restarted
while Patroni moves the leader. Synchronous mode: every acknowledged event is stored once after the
leader is killed mid-stream. Asynchronous mode with the leader's WAL sender stalled: the commits the
new leader lacks are counted exactly, whether the service runs through the failover or is stopped
during it (told at its next start, ingestor/commits.py). A planned switchover loses nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import msgspec
import psycopg
import pytest

from ingestor.client import Sender

from .checker import identity_holds, logged_losses
from .fix_patroni import LOOP_WAIT_S, TTL_S, PatroniCluster

pytestmark = pytest.mark.slow
SCALES, PER_FRAME = 20, 200


@pytest.fixture
def patroni(request) -> Iterator[PatroniCluster]:
    cluster = PatroniCluster(synchronous=request.param == "sync")
    try:
        yield cluster
    finally:
        cluster.close()


def frames(first_seq: int, count: int) -> list[bytes]:
    """``count`` events per scale over SCALES scales, PER_FRAME a frame."""
    now_ms = int(time.time() * 1000) - 600_000
    events = [{"scale_id": scale, "seq": seq, "ts": now_ms + seq, "data_1": f"{seq}"}
              for seq in range(first_seq, first_seq + count) for scale in range(1, SCALES + 1)]
    return [msgspec.msgpack.encode(events[i:i + PER_FRAME]) for i in range(0, len(events), PER_FRAME)]


def get_health(svc) -> int:
    try:
        with urllib.request.urlopen(f"http://{svc.http}/health", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def count_on(cluster: PatroniCluster, node) -> tuple[int, int]:
    with psycopg.connect(cluster.node_dsn(node), autocommit=True) as c:
        return c.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone()


@pytest.fixture
def stalled_senders() -> Iterator[list[int]]:
    """The WAL senders a test stopped (:func:`stall_wal_senders`), killed at its end: a stopped process outlives
    its postmaster (two per run were left, streaming, after the cluster was gone)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stall_wal_senders(cluster: PatroniCluster) -> list[int]:
    """SIGSTOP the leader's WAL senders: its commits go on, and no replica receives them."""
    with psycopg.connect(cluster.node_dsn(cluster.wait_leader()), autocommit=True) as c:
        pids = [pid for (pid,) in c.execute("SELECT pid FROM pg_stat_replication")]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def wait_replicas_have(cluster: PatroniCluster, n: int, timeout_s: float = 30) -> None:
    leader = cluster.wait_leader()
    deadline = time.monotonic() + timeout_s
    for node in (n_ for n_ in cluster.nodes if n_ is not leader):
        while count_on(cluster, node)[0] != n:
            assert time.monotonic() < deadline, f"{node.name} has {count_on(cluster, node)[0]} rows, not {n}"
            time.sleep(0.1)


@pytest.mark.parametrize("patroni", ["sync"], indirect=True)
def test_sync_mode_leader_killed_mid_stream_keeps_every_acknowledged_event_once(patroni, service_factory):
    svc = service_factory("--dsn", patroni.dsn, "--writers", "2", "--batch-timeout-ms", "20")
    svc.wait_ready()
    messages = frames(1, 400)  # 8,000 events in 40 messages
    replies: dict = {}
    half_answered = threading.Event()

    def send() -> None:
        with Sender(svc.ack_bind, acked=True, resend_after_s=3) as sender:
            for i, frame in enumerate(messages):
                sender.send_frames([frame], token=b"m%d" % i)
                if i == len(messages) // 2:
                    sender.wait(60)
                    half_answered.set()
                time.sleep(0.05)
            replies.update(sender.wait(180))

    sender = threading.Thread(target=send)
    sender.start()
    assert half_answered.wait(90)
    before = svc.stats()
    old, killed = patroni.kill_leader()
    new = patroni.wait_leader(other_than=old)
    promoted = time.monotonic()
    svc.wait_for(lambda s: s["persisted"] + s["duplicates"] > before["persisted"] + before["duplicates"], 120)
    print(f"\nPatroni failover (ttl {TTL_S} s, loop_wait {LOOP_WAIT_S} s): {new.name} leader "
          f"{promoted - killed:.1f} s after the kill, first commit on it {time.monotonic() - killed:.1f} s")
    sender.join()
    s = svc.wait_for(lambda s: s["pending"] == 0)
    assert len(replies) == len(messages) and all(r.error is None for r in replies.values())
    assert count_on(patroni, new) == (8000, 8000)
    with psycopg.connect(patroni.node_dsn(new), autocommit=True) as c:
        assert c.execute("SELECT min(seq), max(seq), count(*) FROM scale_current_states").fetchone() == (400, 400, SCALES)
    assert s["lost_after_commit"] == 0 and s["lost"] == 0 and identity_holds(s), s
    assert svc.proc.poll() is None and "LOST" not in svc.output()  # never restarted, nothing lost
    assert svc.terminate() == 0


@pytest.mark.parametrize("during", ["running", "stopped"])
@pytest.mark.parametrize("patroni", ["async"], indirect=True)
def test_async_mode_the_commits_the_new_leader_lacks_are_counted_exactly(patroni, stalled_senders, service_factory,
                                                                         during):
    svc = service_factory("--dsn", patroni.dsn, "--writers", "2", "--batch-timeout-ms", "20")
    svc.wait_ready()
    svc.send(*frames(1, 50))  # 1,000 events every node will have
    svc.wait_for(lambda s: s["persisted"] == 1000)
    wait_replicas_have(patroni, 1000)
    stalled_senders.extend(stall_wal_senders(patroni))
    svc.send(*frames(51, 100))  # 2,000 committed on the leader alone
    svc.wait_for(lambda s: s["persisted"] == 3000 and s["pending"] == 0)
    if during == "stopped":
        assert svc.terminate() == 0
    old, _ = patroni.kill_leader()
    new = patroni.wait_leader(other_than=old)
    assert count_on(patroni, new) == (1000, 1000)
    if during == "stopped":
        svc = service_factory("--dsn", patroni.dsn, "--writers", "2", "--batch-timeout-ms", "20")
        svc.wait_ready()
    svc.send(*frames(151, 50))  # the writers write again, on the new leader
    svc.wait_for(lambda s: s["pending"] == 0 and s["lost_after_commit"] == 2000 and s["persisted"] >=
                 (1000 if during == "stopped" else 4000))
    assert logged_losses(svc.output()) == 2000
    assert ("while the service was stopped" in svc.output()) == (during == "stopped")
    assert count_on(patroni, new) == (2000, 2000)
    assert svc.terminate() == 0


@pytest.mark.parametrize("patroni", ["async"], indirect=True)
def test_a_planned_switchover_under_load_loses_nothing_even_without_synchronous_mode(patroni, service_factory):
    svc = service_factory("--dsn", patroni.dsn, "--writers", "2", "--batch-timeout-ms", "20")
    svc.wait_ready()
    stop = threading.Event()
    sent = []

    def send() -> None:
        first = 1
        while not stop.is_set():
            svc.send(*frames(first, 10))
            sent.append(first)
            first += 10
            time.sleep(0.1)

    sender = threading.Thread(target=send)
    sender.start()
    svc.wait_for(lambda s: s["persisted"] >= 2000)
    old = patroni.wait_leader()
    candidate = next(n for n in patroni.nodes if n is not old)
    samples: list[tuple[float, int]] = []  # (time, persisted) every 0.1 s through the switchover
    health: set[int] = set()  # what /health answered meanwhile

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), svc.stats()["persisted"]))
            try:
                with urllib.request.urlopen(f"http://{svc.http}/health", timeout=2) as r:
                    health.add(r.status)
            except urllib.error.HTTPError as e:
                health.add(e.code)
            time.sleep(0.1)

    sampling = threading.Thread(target=sample)
    sampling.start()
    try:
        patroni.switchover(candidate)
        assert patroni.wait_leader(other_than=old) is candidate
        mark = svc.stats()["persisted"]
        svc.wait_for(lambda s: s["persisted"] > mark + 1000, 60)  # committing on the new leader
    finally:
        stop.set()
        sampling.join()
        sender.join()
    # how long the writers waited: the longest time persisted stood still
    moves = [t for (t, n), (_, before) in zip(samples[1:], samples) if n > before]
    waited = max(b - a for a, b in zip(moves, moves[1:]))
    events = len(sent) * 10 * SCALES
    s = svc.wait_for(lambda s: s["pending"] == 0 and s["persisted"] + s["duplicates"] >= events, 120)
    print(f"\nswitchover under load: {events} events, the writers committed nothing for {waited:.1f} s at most; "
          f"/health answered {sorted(health)}")
    deadline = time.monotonic() + 15
    while get_health(svc) != 200:  # green again once every writer committed on the new leader
        assert time.monotonic() < deadline, "/health stayed 503 after the switchover"
        time.sleep(0.2)
    assert count_on(patroni, candidate) == (events, events)
    assert s["lost_after_commit"] == 0 and s["lost"] == 0 and identity_holds(s), s
    assert "LOST" not in svc.output() and svc.proc.poll() is None
    assert svc.terminate() == 0
