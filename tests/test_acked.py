"""Acked mode (docs/PROTOCOL.md §5) against the running service: replies only after commit, re-sends stored once."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest
import zmq

from ingestor import leftovers, security

from .test_service import identity_holds

pytestmark = pytest.mark.slow
START_MS = 1_700_000_000_000


def frame(scale_id: int, seqs: range) -> bytes:
    return msgspec.msgpack.encode(
        [{"scale_id": scale_id, "seq": s, "ts": START_MS + s, "data_1": f"{s}.5"} for s in seqs]
    )


class AckedSender:
    """A DEALER sender: sends ``[token, frame...]`` and reads ``[token, reply]``."""

    def __init__(self, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            security.apply_client(self.sock, *curve)
        self.sock.connect(endpoint)

    def send(self, token: bytes, *frames: bytes) -> None:
        self.sock.send_multipart([token, *frames])

    def replies(self, timeout_s: float, want: int = 0) -> list[tuple[bytes, dict]]:
        """Replies arriving within ``timeout_s`` (returns early once ``want`` have arrived)."""
        out = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(left * 1000):
            token, reply = self.sock.recv_multipart()
            out.append((token, msgspec.msgpack.decode(reply)))
            if want and len(out) >= want:
                break
        return out

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.mark.promise
def test_acked_reply_comes_only_after_the_events_are_committed(service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    sender = AckedSender(svc.ack_bind)
    bad = msgspec.msgpack.encode({"scale_id": 0, "seq": 1, "ts": 1})
    sender.send(b"t-1", frame(11, range(3)), bad, frame(12, range(2)))
    (token, reply), = sender.replies(10, want=1)
    # the reply is the promise: the rows must be there the moment it arrives
    assert conn.execute("SELECT count(*) FROM weighing_logs").fetchone()[0] == 5
    assert (token, reply) == (b"t-1", {"accepted": 5, "duplicates": 0, "invalid": 1,
                                       "reasons": ["invalid: invalid event: Expected `int` >= 1 - at `$.scale_id`"]})
    sender.send(b"t-2", frame(11, range(4)))  # three re-sent, one new
    assert sender.replies(10, want=1) == [(b"t-2", {"accepted": 1, "duplicates": 3, "invalid": 0})]
    seconds = msgspec.msgpack.encode([{"scale_id": 13, "seq": i, "ts": 1_700_000_000 + i} for i in range(12)])
    sender.send(b"t-3", seconds)  # ts in seconds: refused, and the reply says why (the first 10 reasons)
    (_, reply), = sender.replies(10, want=1)
    assert (reply["accepted"], reply["invalid"], len(reply["reasons"])) == (0, 12, 10)
    assert reply["reasons"][0] == ("past_ts: ts 1700000000 ms is before 2000-01-01T00:00:00Z "
                                   "(seconds instead of milliseconds?)")
    sender.close()
    assert svc.terminate() == 0


def test_acked_message_breaking_the_token_rule_counts_and_dead_letters_each_event(service_factory, dsn, conn):
    # issue 10 #7: a 65-byte token with a 5-event frame counted 1 invalid event, and a
    # token-only message was answered like an empty success (docs/PROTOCOL.md §5 v1.1)
    from ingestor import deadletter

    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    sender = AckedSender(svc.ack_bind)
    sender.send(b"x" * 65, frame(13, range(5)), frame(14, range(2)))
    assert sender.replies(10, want=1) == [
        (b"x" * 65, {"accepted": 0, "duplicates": 0, "invalid": 7, "error": "bad_token",
                     "reasons": ["bad_token: acked-mode token is 65 bytes, more than 64 (docs/PROTOCOL.md §5)"]})]
    sender.send(b"forgot-the-token-or-the-frame")
    assert sender.replies(10, want=1) == [
        (b"forgot-the-token-or-the-frame", {"accepted": 0, "duplicates": 0, "invalid": 0, "error": "no_frames"})]
    sender.send(b"ok", frame(15, range(3)))
    assert sender.replies(10, want=1) == [(b"ok", {"accepted": 3, "duplicates": 0, "invalid": 0})]
    sender.close()
    s = svc.wait_for(lambda s: s["ack_replies"] == 3 and s["pending"] == 0)
    assert identity_holds(s) and (s["received_events"], s["invalid"], s["persisted"]) == (10, 7, 3)
    letters = [letter for _, letter in deadletter.read(svc.dead_letter_dir)]
    assert sorted((letter.kind, letter.index) for letter in letters) == \
        [("bad_token", i) for i in (0, 0, 1, 1, 2, 3, 4)]
    assert {msgspec.msgpack.decode(letter.frame_bytes())["scale_id"] for letter in letters} == {13, 14}
    assert conn.execute("SELECT count(*) FROM weighing_logs").fetchone()[0] == 3
    assert svc.terminate() == 0


def test_sender_that_drops_replies_and_resends_stores_each_event_once(service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "2", "--batch-timeout-ms", "50")
    svc.wait_ready()
    sender = AckedSender(svc.ack_bind)
    messages = {f"m{i}".encode(): frame(i % 37 + 1, range(i * 10, i * 10 + 10)) for i in range(300)}
    unacked = set(messages)
    sends = 0
    while unacked:
        for token in sorted(unacked):
            sender.send(token, messages[token])
            sends += 1
        for token, _reply in sender.replies(0.3):
            if hash(token) % 3 == 0 and sends < 3 * len(messages):
                continue  # this reply is "lost": the message goes out again
            unacked.discard(token)
    sender.close()
    assert sends > len(messages)
    s = svc.wait_for(lambda s: s["pending"] == 0 and s["persisted"] == 3000)
    assert identity_holds(s) and s["duplicates"] == (sends - len(messages)) * 10
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (3000, 3000)
    assert svc.terminate() == 0


@pytest.mark.promise
def test_sigkill_of_the_whole_tree_never_loses_an_acknowledged_event(service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "2", "--batch-timeout-ms", "20")
    svc.wait_ready()
    messages = {f"k{i}".encode(): frame(i % 50 + 1, range(i * 5, i * 5 + 5)) for i in range(20_000)}
    acknowledged: set[bytes] = set()
    stop = threading.Event()

    def send_all() -> None:
        sender = AckedSender(svc.ack_bind)
        for n, (token, f) in enumerate(messages.items()):
            if stop.is_set():
                break
            sender.send(token, f)
            if n % 50 == 49:
                acknowledged.update(t for t, _ in sender.replies(0.01))
        acknowledged.update(t for t, _ in sender.replies(0.2))
        sender.close()

    thread = threading.Thread(target=send_all)
    thread.start()
    time.sleep(2.5)
    svc.kill_tree()  # supervisor, front, writers: all at once
    stop.set()
    thread.join()
    # nobody was left to unlink its blocks: what it recorded, not every name new in /dev/shm (other
    # services' on this machine, a CI run's beside this one, are not ours to remove)
    assert leftovers.remove_stale(svc.data_dir) > 0
    assert acknowledged
    keys = {(r[0], r[1]) for r in conn.execute("SELECT scale_id, seq FROM weighing_logs")}
    for token in acknowledged:
        i = int(token[1:])
        assert {(i % 50 + 1, s) for s in range(i * 5, i * 5 + 5)} <= keys, token
    # The sender re-sends everything it has no reply for; then each event is stored once.
    again = service_factory("--dsn", dsn, "--writers", "2")
    again.wait_ready()
    sender = AckedSender(again.ack_bind)
    missing = set(messages) - acknowledged
    resent = len(missing)
    for _ in range(5):  # a real sender: re-send what has no reply yet, reading replies as it goes
        for n, token in enumerate(sorted(missing)):
            sender.send(token, messages[token])
            if n % 100 == 99:
                missing -= {t for t, _ in sender.replies(0.001)}
        missing -= {t for t, _ in sender.replies(3)}
        if not missing:
            break
    assert not missing
    sender.close()
    total = len(messages) * 5
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (total, total)
    assert again.terminate() == 0
    print(f"\nSIGKILL of the tree: {len(acknowledged)} messages acknowledged before the kill, all stored; "
          f"{resent} re-sent after the restart; {total} events stored once")


def test_writer_killed_between_commit_and_release_writes_nothing_twice(service_factory, dsn, conn, tmp_path):
    from ingestor import failpoints

    state = tmp_path / "failpoints"
    state.mkdir()
    # the first writer to commit dies right after it
    svc = service_factory("--dsn", dsn, "--writers", "2", env={failpoints.ENV: "writer.after_commit=1*kill",
                                                                failpoints.STATE_ENV: str(state)})
    svc.wait_ready()
    from ingestor.simulator import Simulator

    Simulator(svc.bind, scales=20, rate=0, events=4000, start_ms=START_MS).run()
    s = svc.wait_for(lambda s: s["persisted"] == 4000 and s["pending"] == 0 and all(w["alive"] for w in s["writers"]))
    assert failpoints.fired("writer.after_commit", state) == 1
    assert sum(w["restarts"] for w in s["writers"]) == 1 and s["duplicates"] == 0 and identity_holds(s)
    assert "committed before the last writer died" in svc.output()
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (4000, 4000)
    assert svc.terminate() == 0
