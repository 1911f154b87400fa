"""ingestor/front.py: the front halts the service only when it cannot bind; any later error restarts it."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator

import msgspec
import numpy as np
import pytest
import zmq

from ingestor.acks import AckTable
from ingestor.child import Child
from ingestor.errors import BootError
from ingestor.front import run_front
from ingestor.protocol import RECORD_DTYPE
from ingestor.ring import Ring
from ingestor.roles import DeadLetterArgs, FrontArgs, SharedBlocks
from ingestor.stats import Counters


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def shared() -> Iterator[SharedBlocks]:
    """The blocks a supervisor creates for one writer, owned by the test."""
    ring = Ring.create(lanes=1, lane_capacity=64, dtype=RECORD_DTYPE, ctx=multiprocessing.get_context("spawn"))
    counters, acks = Counters.create(1), AckTable.create(1)
    yield SharedBlocks(ring=ring.spec, semaphores=ring.handles[1], counters=counters.name, acks=acks.name)
    for block in (ring, counters, acks):
        block.unlink()
        block.close()


def front_args(shared: SharedBlocks, tmp_path, bind: str, ack_bind: str | None) -> FrontArgs:
    return FrontArgs(shared=shared, bind=bind, ack_bind=ack_bind, max_frame_bytes=1 << 20, spool_dir=str(tmp_path / "spool"),
                     spool_max_bytes=1 << 20, dead_letters=DeadLetterArgs(str(tmp_path / "dl"), 1 << 20))


@pytest.mark.parametrize("taken", ["bind", "ack_bind"])
def test_an_endpoint_already_bound_is_a_boot_error_naming_it(shared, tmp_path, taken):
    endpoints = {"bind": free_endpoint(), "ack_bind": free_endpoint()}
    ctx = zmq.Context()
    holder = ctx.socket(zmq.PULL)
    holder.bind(endpoints[taken])
    try:
        with pytest.raises(BootError, match=f"cannot bind {endpoints[taken]}: "):
            run_front(front_args(shared, tmp_path, endpoints["bind"], endpoints["ack_bind"]), lambda: False)
    finally:
        holder.close(linger=0)
        ctx.term()


def test_an_error_once_listening_is_not_a_boot_error_so_the_front_is_restarted(shared, tmp_path):
    """child.main exits 3 (halt) only for BootError; anything else exits 1 and the supervisor restarts the front."""
    calls = 0

    def stop() -> bool:  # the loop's own check, three rounds in: an error of the running front
        nonlocal calls
        calls += 1
        if calls == 3:
            raise zmq.ZMQError(zmq.ETERM)
        return False

    with pytest.raises(zmq.ZMQError) as raised:
        run_front(front_args(shared, tmp_path, free_endpoint(), free_endpoint()), stop)
    assert not isinstance(raised.value, BootError)


@pytest.fixture
def ring_and_shared() -> Iterator[tuple[Ring, SharedBlocks]]:
    ring = Ring.create(lanes=1, lane_capacity=256, dtype=RECORD_DTYPE, ctx=multiprocessing.get_context("spawn"))
    counters, acks = Counters.create(1), AckTable.create(1)
    yield ring, SharedBlocks(ring=ring.spec, semaphores=ring.handles[1], counters=counters.name, acks=acks.name)
    for block in (ring, counters, acks):
        block.unlink()
        block.close()


def _send_spaced(bind: str, frames: int, spacing_s: float, acked: bool = False) -> list[int]:
    """``frames`` single-event frames, one per ``spacing_s`` (``acked``: as acked messages from a DEALER); the
    wall clock (ns) just before each is sent."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.DEALER if acked else zmq.PUSH)
    push.connect(bind)
    time.sleep(0.3)  # connected before the first frame, so none waits in the sender's queue
    sent = []
    try:
        for seq in range(frames):
            sent.append(time.time_ns())
            frame = msgspec.msgpack.encode({"scale_id": 1, "seq": seq, "ts": sent[-1] // 10**6})
            push.send_multipart([b"t%d" % seq, frame] if acked else [frame])
            time.sleep(spacing_s)
        time.sleep(0.3)
    finally:
        push.close(linger=1000)
        ctx.term()
    return sent


def _run_front_while(args: FrontArgs, act) -> None:
    stop = threading.Event()
    t = threading.Thread(target=run_front, args=(args, stop.is_set))
    t.start()
    try:
        act()
    finally:
        stop.set()
        t.join(10)


@pytest.mark.parametrize(("spacing_ms", "paced"), [(2, True), (15, False), (80, False)])
def test_frames_faster_than_the_pace_are_taken_in_few_wakes_each_stamped_no_later_than_it_was_sent(
        ring_and_shared, tmp_path, spacing_ms, paced):
    """The module doc's "Pacing": a busy socket is looked at once per pace, one whose frames come less than twice
    per pace (15 ms apart, a pace of 25 ms: a paced wake would find one) on every frame; either
    way a record's received_ns is never after the frame was sent, so the latency bound counts from before it came."""
    ring, shared = ring_and_shared
    args = msgspec.structs.replace(front_args(shared, tmp_path, free_endpoint(), None), pace_ms=25.0)
    frames = 60 if paced else 6
    sent: list[int] = []
    _run_front_while(args, lambda: sent.extend(_send_spaced(args.bind, frames, spacing_ms / 1000)))
    lane = ring.lanes[0]
    records = lane.peek(lane.used())
    assert list(records["seq"]) == list(range(frames))
    stamps = records["received_ns"]
    assert (stamps <= np.array(sent) + 5 * 10**6).all()  # never later than sent (5 ms: the two clocks' reads)
    wakes = len(set(stamps.tolist()))
    if paced:  # 60 frames over ~150 ms (sleep overshoot makes it longer): about one look per 25 ms, not 60
        assert wakes <= (sent[-1] - sent[0]) / 25e6 + 4, wakes
        assert (stamps >= np.array(sent) - 40 * 10**6).all()  # at most a pace and a half before it was sent
    else:
        assert wakes == frames
        assert (stamps >= np.array(sent)).all()  # a frame of a quiet plant is stamped when it comes


def test_while_replies_wait_a_paced_front_looks_every_ack_poll_not_once_per_pace(ring_and_shared, tmp_path):
    """The module doc's "Pacing": acked senders wait for their replies, so while replies wait (here: never
    committed) a busy front looks for commits every ACK_POLL_MS (10 ms), however long its pace (50 ms)."""
    ring, shared = ring_and_shared
    args = msgspec.structs.replace(front_args(shared, tmp_path, free_endpoint(), free_endpoint()), pace_ms=50.0)
    sent: list[int] = []
    _run_front_while(args, lambda: sent.extend(_send_spaced(args.ack_bind, 150, 0.002, acked=True)))
    lane = ring.lanes[0]
    records = lane.peek(lane.used())
    assert list(records["seq"]) == list(range(150))
    looks = len(set(records["received_ns"].tolist()))
    # ~300-450 ms of frames: 30-45 looks 10 ms apart; paced at 50 ms it would be 6-9
    assert looks >= (sent[-1] - sent[0]) / 25e6, looks


def test_an_idle_front_process_stops_at_once_on_sigterm_though_it_looks_once_a_second(ring_and_shared, tmp_path):
    """front.IDLE_POLL_MS: a front process with nothing to take sleeps a second between looks, and its stop flag's
    wakeup pipe (child.StopFlag) ends that sleep on SIGTERM; four stops, each within half a second."""
    _, shared = ring_and_shared
    took = []
    for _ in range(4):
        front = Child(front_args(shared, tmp_path, free_endpoint(), None))
        front.start(multiprocessing.get_context("spawn"), "warning", "test")
        try:
            time.sleep(1.3)  # bound, listening, asleep in an idle look
            started = time.monotonic()
            front.terminate()
            while front.reap() is None:
                assert time.monotonic() - started < 10, "the front did not stop"
                time.sleep(0.01)
            took.append(time.monotonic() - started)
        finally:
            front.kill()
            front.join(5)
    assert max(took) < 0.5, took
