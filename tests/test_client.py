"""ingestor.client: the sender library batches, answers and re-sends as docs/PROTOCOL.md §2 and §5 say."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest
import zmq

from ingestor.client import Reply, Sender, Unanswered

from .checker import identity_holds
from .fix_service import free_port

START_MS = 1_700_000_000_000


def events(scale: int, seqs: range) -> list[dict]:
    return [{"scale_id": scale, "seq": s, "ts": START_MS + s, "data_1": f"{s}.5 kg"} for s in seqs]


@pytest.fixture
def router():
    """A bare ROUTER on a free port, standing in for the acked endpoint in unit tests."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sock.bind(endpoint)
    yield endpoint, sock
    sock.close()
    ctx.term()


def test_send_splits_events_into_array_frames_of_at_most_events_per_frame(router):
    endpoint, sock = router
    with Sender(endpoint, acked=True, events_per_frame=1000) as sender:
        token = sender.send(events(1, range(2500)))
        identity, got, *frames = sock.recv_multipart()
        assert got == token and [len(msgspec.msgpack.decode(f)) for f in frames] == [1000, 1000, 500]
        assert sender.events_sent == 2500 and sender.messages_sent == 1 and sender.unanswered == [token]


def test_unanswered_message_is_resent_until_answered(router):
    endpoint, sock = router
    received = []

    def ingestor_that_drops_the_first_copy():  # as one that died before answering
        received.append(sock.recv_multipart())
        if sock.poll(5000):
            identity, token, *frames = received.append(sock.recv_multipart()) or received[-1]
            reply = {"accepted": 3, "duplicates": 0, "invalid": 0, "future_key": 1}
            sock.send_multipart([identity, token, msgspec.msgpack.encode(reply)])

    answering = threading.Thread(target=ingestor_that_drops_the_first_copy)
    answering.start()
    with Sender(endpoint, acked=True, resend_after_s=0.3) as sender:
        token = sender.send(events(1, range(3)))
        replies = sender.wait(5)
        assert replies == {token: Reply(accepted=3, duplicates=0, invalid=0)}  # unknown reply keys ignored
        assert sender.unanswered == []
    answering.join()
    assert len(received) == 2 and received[0][1:] == received[1][1:]


def test_a_sender_keeping_no_replies_hands_each_reply_out_of_poll_once_and_keeps_none(router):
    endpoint, sock = router
    with Sender(endpoint, acked=True, keep_replies=False) as sender:
        tokens = [sender.send(events(1, range(i, i + 1))) for i in range(3)]
        for _ in tokens:
            identity, token, *_frames = sock.recv_multipart()
            sock.send_multipart([identity, token, msgspec.msgpack.encode({"accepted": 1, "duplicates": 0, "invalid": 0})])
        got: dict = {}
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            new = sender.poll(0.1)
            assert not set(new) & set(got)  # each reply once
            got |= new
        assert set(got) == set(tokens) and sender.replies == {} and sender.unanswered == []
        assert sender.wait(0.1) == {}


def test_wait_raises_unanswered_naming_the_tokens_and_keeps_them(router):
    endpoint, _ = router
    with Sender(endpoint, acked=True) as sender:
        token = sender.send(events(1, range(3)), token=b"mine")
        with pytest.raises(Unanswered) as e:
            sender.wait(0.3)
        assert token == b"mine" and e.value.tokens == [b"mine"] and sender.unanswered == [b"mine"]
        assert "1 acked message(s) unanswered after 0.3 s" in str(e.value)


def test_values_out_of_range_are_refused_with_their_value():
    with pytest.raises(ValueError, match="events_per_frame must be 1..1000, got 0"):
        Sender("tcp://127.0.0.1:1", events_per_frame=0)
    with pytest.raises(ValueError, match="no endpoint given"):
        Sender([])
    with Sender("tcp://127.0.0.1:1", acked=True) as sender:
        with pytest.raises(ValueError, match="token of 65 bytes is over 64"):
            sender.send(events(1, range(1)), token=b"x" * 65)
    with Sender("tcp://127.0.0.1:1") as sender:
        with pytest.raises(ValueError, match="acked mode"):
            sender.poll()
        sender.close(linger_s=0)


@pytest.mark.slow
def test_acked_sender_gets_each_message_answered_after_commit_and_resends_count_as_duplicates(
        service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    with Sender(svc.ack_bind, acked=True, events_per_frame=100) as sender:
        first = sender.send(events(1, range(250)) + [{"scale_id": 2, "seq": 1, "ts": "yesterday"}])
        replies = sender.wait(30)
        assert replies[first] == Reply(accepted=250, duplicates=0, invalid=1)
        assert conn.execute("SELECT count(*) FROM weighing_logs").fetchone()[0] == 250  # committed before the reply
        again = sender.send(events(1, range(200, 300)))
        assert sender.wait(30)[again] == Reply(accepted=50, duplicates=50, invalid=0)
    s = svc.wait_for(lambda s: s["pending"] == 0)
    assert s["persisted"] == 300 and s["duplicates"] == 50 and identity_holds(s)


@pytest.mark.slow
def test_fire_and_forget_sender_delivers_everything_before_close_returns(service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "1")
    svc.wait_ready()
    with Sender(svc.bind, fmt="json", events_per_frame=7) as sender:
        for start in range(0, 1000, 100):
            sender.send(events(3, range(start, start + 100)))
    s = svc.wait_for(lambda s: s["persisted"] >= 1000 and s["pending"] == 0)
    assert s["received_frames"] == 10 * 15 and s["persisted"] == 1000  # 100 events: 14 frames of 7, 1 of 2
    assert conn.execute("SELECT data_1->>'val' FROM weighing_logs WHERE seq = 999").fetchone() == ("999.5 kg",)


def test_wait_with_no_ingestor_connected_keeps_its_deadline():
    # Two endpoints (ZMQ_IMMEDIATE), neither up: a re-send cannot be queued; wait() must not block on it.
    with Sender(["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"], acked=True, resend_after_s=0.2) as sender:
        with pytest.raises(zmq.Again):  # nothing connected: ZeroMQ takes no message
            sender._sock.send_multipart([b"probe", b"x"], zmq.NOBLOCK)
        sender._unanswered[b"t"] = ([b"frame"], 0.0)  # as if sent long ago (send() itself would block here)
        t0 = time.monotonic()
        with pytest.raises(Unanswered):
            sender.wait(0.5)
        assert time.monotonic() - t0 < 2
        assert sender.messages_resent == 0
