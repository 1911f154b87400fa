"""A PostgreSQL primary with a streaming standby, promoted mid-stream (docs/operations.md#scaling-out-and-failover).

The service runs on a libpq multi-host DSN with ``target_session_attrs=read-write``:
after the primary dies its writers reconnect to whichever server accepts writes.
Synchronous replication: acknowledged events wait for the standby (a leader killed
mid-stream under Patroni: tests/test_patroni.py).
Asynchronous: the commits the promoted standby lacks are detected, counted
(``lost_after_commit``), logged as ``LOST n`` and turn ``/health`` red.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import msgspec
import psycopg
import pytest

from ingestor.client import Sender

from .checker import identity_holds, logged_losses
from .replication import Replicated

pytestmark = pytest.mark.slow
START_MS = 1_700_000_000_000
SCALES, PER_FRAME = 20, 200  # a frame over placement.TRICKLE_RECORDS: both lanes get each frame's scales


@pytest.fixture
def replicated(request) -> Iterator[Replicated]:
    servers = Replicated(synchronous=request.param == "sync")
    try:
        yield servers
    finally:
        servers.close()


def frames(first_seq: int, count: int) -> list[bytes]:
    """``count`` events per scale over SCALES scales, seqs ``first_seq`` … ``first_seq + count - 1``, PER_FRAME a frame."""
    events = [{"scale_id": scale, "seq": seq, "ts": START_MS + seq, "data_1": f"{seq}"}
              for seq in range(first_seq, first_seq + count) for scale in range(1, SCALES + 1)]
    return [msgspec.msgpack.encode(events[i:i + PER_FRAME]) for i in range(0, len(events), PER_FRAME)]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.promise
@pytest.mark.parametrize("replicated", ["async"], indirect=True)
def test_async_failover_counts_logs_and_reports_the_commits_the_promoted_standby_lacks(replicated, service_factory):
    svc = service_factory("--dsn", replicated.dsn, "--writers", "2", "--batch-timeout-ms", "20")
    svc.wait_ready()
    svc.send(*frames(1, 50))  # 1,000 events the standby will have
    svc.wait_for(lambda s: s["persisted"] == 1000)
    replicated.wait_standby_has(1000)
    replicated.hold_back_standby()
    svc.send(*frames(51, 100))  # 2,000 committed (and released) on the primary alone
    svc.wait_for(lambda s: s["persisted"] == 3000 and s["pending"] == 0)
    replicated.fail_over()
    assert replicated.standby_count() == 1000
    svc.send(*frames(151, 50))  # both lanes write again: their new connections reach the promoted standby

    s = svc.wait_for(lambda s: s["persisted"] == 4000 and s["pending"] == 0 and s["lost_after_commit"] == 2000)
    with psycopg.connect(replicated.standby.dsn, autocommit=True) as c:
        assert c.execute("SELECT count(*), count(DISTINCT (scale_id, seq)), min(seq), max(seq) FROM weighing_logs "
                         "WHERE seq > 50").fetchone() == (1000, 1000, 151, 200)
        assert c.execute("SELECT count(*) FROM weighing_logs").fetchone()[0] == 2000
    # counted once, beside the identity (the events were persisted, then the database lost them)
    assert s["lost"] == 0 and identity_holds(s), s
    out = svc.output()
    assert logged_losses(out) == 2000, out[-3000:]
    assert "an asynchronous standby promoted" in out
    status, body = get(f"http://{svc.http}/health")
    assert status == 503 and "2000 committed events are missing" in json.loads(body)["reason"], body
    assert "ingestor_lost_after_commit_total 2000.0" in get(f"http://{svc.http}/metrics")[1].decode()
    # counted once: more writes after the loss leave the count alone
    svc.send(*frames(201, 10))
    s = svc.wait_for(lambda s: s["persisted"] == 4200 and s["pending"] == 0)
    assert s["lost_after_commit"] == 2000
    assert svc.terminate() == 0


@pytest.mark.parametrize("replicated", ["sync"], indirect=True)
def test_acked_events_wait_for_the_synchronous_standby_and_fire_and_forget_ones_do_not(replicated, service_factory):
    # The recipe of docs/operations.md#scaling-out-and-failover: a synchronous standby, and the
    # ingestor's role at synchronous_commit = local so that fire-and-forget batches do not wait for it.
    with psycopg.connect(replicated.primary.dsn, autocommit=True) as c:
        c.execute("ALTER ROLE postgres SET synchronous_commit = local")
    svc = service_factory("--dsn", replicated.dsn, "--writers", "2", "--batch-timeout-ms", "20")
    svc.wait_ready()
    replicated.hold_back_standby()
    svc.send(*frames(1, 50))  # 1,000 fire-and-forget events: committed on the primary alone
    svc.wait_for(lambda s: s["persisted"] == 1000 and s["pending"] == 0)
    with Sender(svc.ack_bind, acked=True, resend_after_s=120) as sender:
        for i, frame in enumerate(frames(51, 50)):  # 1,000 acked events in 5 messages
            sender.send_frames([frame], token=b"m%d" % i)
        assert sender.poll(3) == {}  # their COMMITs wait for the standby: nothing is answered
        replicated.fail_over()
        replies = sender.wait(60)  # written again on the promoted standby, then answered
    assert len(replies) == 5 and all(r.accepted == PER_FRAME and r.error is None for r in replies.values()), replies
    s = svc.wait_for(lambda s: s["pending"] == 0 and s["lost_after_commit"] == 1000)
    with psycopg.connect(replicated.standby.dsn, autocommit=True) as c:
        # every acknowledged event; none of the fire-and-forget ones the standby never received
        assert c.execute("SELECT count(*), count(DISTINCT (scale_id, seq)), min(seq), max(seq) FROM weighing_logs") \
            .fetchone() == (1000, 1000, 51, 100)
    assert logged_losses(svc.output()) == 1000 and identity_holds(s), s
    assert svc.terminate() == 0
