"""The shared-memory ring: order, wrap-around, full lanes, and crossing processes."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

from ingestor.errors import RingError
from ingestor.protocol import RECORD_DTYPE
from ingestor.ring import Ring


def records(start: int, n: int, scale_id: int = 1) -> np.ndarray:
    r = np.zeros(n, RECORD_DTYPE)
    r["scale_id"] = scale_id
    r["seq"] = np.arange(start, start + n)
    r["received_ns"] = time.time_ns()
    return r


@pytest.fixture
def ring(ring_factory):
    return ring_factory(lanes=2, lane_capacity=8)


def test_ring_wraps_around_keeping_order(ring):
    lane = ring.lanes[0]
    seen = []
    for cycle in range(20):  # 20 x 5 records through 8 slots wraps many times
        assert lane.put(records(cycle * 5, 5)) == 5
        batch = lane.peek(5)
        seen += batch["seq"].tolist()
        lane.release(5)
    assert seen == list(range(100))
    assert lane.head == lane.tail == 100


def test_every_byte_of_a_record_crosses_the_lane_whole_across_wrap_arounds(ring):
    """put and peek copy whole records (ring.whole): random bytes, padding included, come out as they went in,
    in chunks of every size from 1 to the lane's capacity, across the wrap-around."""
    rng = np.random.default_rng(31)
    lane = ring.lanes[1]
    sent = rng.integers(0, 256, 300 * RECORD_DTYPE.itemsize, np.uint8).view(RECORD_DTYPE)
    got, at = [], 0
    while at < len(sent):
        n = int(rng.integers(1, lane.capacity + 1))
        assert lane.put(sent[at : at + n]) == min(n, len(sent) - at)
        got.append(lane.peek(n))
        lane.release(len(got[-1]))
        at += n
    assert b"".join(g.tobytes() for g in got) == sent.tobytes()  # np.concatenate would drop the padding


def test_records_of_another_dtype_are_refused_naming_both(ring):
    other = np.zeros(3, [("scale_id", "<i4"), ("pad", "V364")])  # the same size, other fields
    with pytest.raises(RingError, match=r"records of dtype .* put into lane 0 of "):
        ring.lanes[0].put(other)
    assert ring.lanes[0].used() == 0


def test_full_lane_refuses_more_and_keeps_what_it_holds(ring):
    lane = ring.lanes[1]
    assert lane.put(records(0, 6)) == 6
    assert lane.put(records(6, 6)) == 2  # only 8 slots
    assert lane.put(records(8, 1)) == 0
    assert lane.free() == 0 and ring.used() == 8
    assert lane.put_all(records(8, 1), keep_waiting=lambda: False) == 0
    assert lane.peek(8)["seq"].tolist() == list(range(8))


def test_unreleased_records_stay_for_the_next_consumer(ring):
    lane = ring.lanes[0]
    lane.put(records(0, 4))
    assert lane.peek(4)["seq"].tolist() == [0, 1, 2, 3]  # a consumer read, then "crashed"
    assert lane.peek(4)["seq"].tolist() == [0, 1, 2, 3]  # its successor sees the same
    lane.release(2)
    assert lane.peek(4)["seq"].tolist() == [2, 3]


def test_release_more_than_held_raises(ring):
    from ingestor.errors import RingError

    with pytest.raises(RingError, match="cannot release 1 records from lane 0 holding 0"):
        ring.lanes[0].release(1)


def test_wait_batch_returns_a_full_batch_at_once_and_a_partial_one_when_its_oldest_record_is_interval_old(ring):
    lane = ring.lanes[0]
    lane.put(records(0, 8))
    assert lane.wait_batch(4, 10.0, lambda: True) == 4
    lane.release(8)
    old = records(8, 2)
    old["received_ns"] -= 10 * 10**9  # received 10 s ago
    lane.put(old)
    t0 = time.monotonic()
    assert lane.wait_batch(4, 10.0, lambda: True) == 2  # the oldest waited the interval already: at once
    assert time.monotonic() - t0 < 0.05
    lane.release(2)
    lane.put(records(10, 2))  # received just now
    assert lane.wait_batch(4, 0.2, lambda: True) == 2  # waits until the oldest is 0.2 s old
    assert 0.19 < time.monotonic() - t0 < 1.0
    assert lane.wait_batch(4, 10.0, lambda: False) == 2  # draining: returned regardless


def test_a_record_received_in_the_future_by_the_clock_waits_no_longer_than_the_interval(ring):
    lane = ring.lanes[0]
    ahead = records(0, 1)
    ahead["received_ns"] += 3600 * 10**9  # the wall clock stepped back an hour since the front stamped it
    lane.put(ahead)
    t0 = time.monotonic()
    assert lane.wait_batch(4, 0.2, lambda: True) == 1
    assert time.monotonic() - t0 < 1.0


def test_a_full_lane_is_a_batch_even_below_the_batch_size(ring):
    lane = ring.lanes[0]
    lane.put(records(0, 8))  # the lane's 8 slots
    t0 = time.monotonic()
    assert lane.wait_batch(100, 10.0, lambda: True) == 8
    assert time.monotonic() - t0 < 0.05


def test_a_waiting_consumer_is_woken_when_the_lane_reaches_the_count_it_waits_for(ring):
    lane = ring.lanes[0]
    woke: list[float] = []

    def consume() -> None:
        woke.append(lane.wait_batch(1, 10.0, lambda: True))  # empty lane: waits for one record
        t0 = time.monotonic()
        woke.append(lane.wait_batch(4, 5.0, lambda: True))  # holds 1, waits for 4
        woke.append(time.monotonic() - t0)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.05)
    lane.put(records(0, 1))
    time.sleep(0.05)
    lane.put(records(1, 2))  # 3 held: below 4, no wakeup
    time.sleep(0.05)
    lane.put(records(3, 1))
    t.join(5)
    assert woke[:2] == [1, 4]
    assert woke[2] < 1.0  # woken by the 4th record, long before the 5 s interval


def _producer(handles, n):
    spec, sems = handles
    ring = Ring.attach(spec, RECORD_DTYPE, sems)
    lane = ring.lanes[0]
    for start in range(0, n, 7):
        lane.put_all(records(start, min(7, n - start)))
    del lane
    ring.close()


def test_an_idle_consumer_looks_about_once_a_second_and_the_draining_flag_wakes_it_at_once(ring):
    """ring.IDLE_WAIT_S: the consumer of an empty lane sleeps a second between looks (each look of an idle writer
    costs CPU), and setting the ring's draining flag ends its wait at once, not at the next look."""
    lane = ring.lanes[0]
    looks: list[float] = []

    def keep_waiting() -> bool:
        looks.append(time.monotonic())
        return not ring.draining

    timer = threading.Timer(2.5, lambda: setattr(ring, "draining", True))
    started = time.monotonic()
    timer.start()
    assert lane.wait_batch(4, 0.05, keep_waiting) == 0
    took = time.monotonic() - started
    timer.join()
    assert 2.5 <= took < 2.9, took  # woken by the flag, not at the look due at 3 s
    assert len(looks) <= 5, len(looks)  # 2.5 s of looks a second apart (0.1 s apart would be 26)


def test_records_cross_processes_in_order_through_a_small_lane(ring):
    n = 500  # far more than the 8 slots: the producer waits for space
    p = multiprocessing.get_context("spawn").Process(target=_producer, args=(ring.handles, n))
    p.start()
    lane, got = ring.lanes[0], []
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        k = lane.wait_batch(8, 0.01, lambda: True)
        if k:
            got += lane.peek(k)["seq"].tolist()
            lane.release(k)
    p.join(10)
    assert p.exitcode == 0
    assert got == list(range(n))
