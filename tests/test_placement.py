"""ingestor.placement on a real ring and spool, no ZeroMQ: ring first, then the spool, in order, nothing dropped."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from ingestor import failpoints
from ingestor.placement import Placement
from ingestor.protocol import RECORD_DTYPE
from ingestor.spool import Spool
from ingestor.stats import FRONT_DTYPE


def records(n: int, *, scales: int = 4, start: int = 0) -> np.ndarray:
    out = np.zeros(n, RECORD_DTYPE)
    i = np.arange(start, start + n)
    out["scale_id"] = i % scales + 1
    out["seq"] = i
    return out


def drain(ring) -> list[tuple[int, int]]:
    """Release everything each lane holds, as writers would: (scale_id, seq) in lane order."""
    got = []
    for lane in ring.lanes:
        held = lane.peek(lane.used())
        got += list(zip(held["scale_id"].tolist(), held["seq"].tolist()))
        lane.release(len(held))
    return got


@pytest.fixture
def placement_factory(ring_factory, tmp_path):
    made = []

    def make(*, lanes=2, lane_capacity=8, spool_max_bytes=1 << 20, stopping=lambda: False, spill_after_s=0.05):
        ring = ring_factory(lanes=lanes, lane_capacity=lane_capacity)
        counters = np.zeros((), FRONT_DTYPE)
        p = Placement(ring=ring, spool=Spool(tmp_path / "spool", RECORD_DTYPE, spool_max_bytes), counters=counters,
                      stopping=stopping, spill_after_s=spill_after_s)
        p.open()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
    failpoints.disarm_all()


def test_records_go_to_their_lanes_in_arrival_order_while_the_ring_has_room(placement_factory):
    p = placement_factory(lanes=2, lane_capacity=8)
    p.place(records(10))
    assert p.spool.events == 0 and int(p.counters["front_pending"]) == 0
    lane0, lane1 = (lane.peek(lane.used()) for lane in p.ring.lanes)
    assert set(lane0["scale_id"] % 2) == {0} and set(lane1["scale_id"] % 2) == {1}
    assert lane0["seq"].tolist() == sorted(lane0["seq"].tolist()) and len(lane0) + len(lane1) == 10


def test_a_trickle_goes_whole_to_lane_0_and_a_burst_by_scale(placement_factory):
    """One writer commits a low rate's events (half the transactions); a burst spreads over the writers."""
    from ingestor.placement import TRICKLE_RECORDS

    p = placement_factory(lanes=2, lane_capacity=4 * TRICKLE_RECORDS)
    p.place(records(5))
    assert [lane.used() for lane in p.ring.lanes] == [5, 0]
    p.place(records(TRICKLE_RECORDS, start=5))
    lane1 = p.ring.lanes[1].peek(p.ring.lanes[1].used())
    assert p.ring.lanes[0].used() == 5 + TRICKLE_RECORDS // 2 and set(lane1["scale_id"] % 2) == {1}


def test_a_ring_whose_writers_free_nothing_spills_the_rest_to_the_spool_and_refills_in_order(placement_factory):
    p = placement_factory(lanes=1, lane_capacity=8)
    p.place(records(20))  # 8 fit; the writer frees nothing: the other 12 spill after spill_after_s
    assert p.ring.used() == 8 and p.spool.events == 12
    assert int(p.counters["front_pending"]) == 12 and int(p.counters["spooled_events"]) == 12
    p.place(records(3, start=20))  # behind the spool, not into the ring, though a writer may free room
    assert p.spool.events == 15
    stored = drain(p.ring)
    while p.spooling:
        p.refill()
        stored += drain(p.ring)
    assert [seq for _, seq in stored] == list(range(23))  # one lane: every event in arrival order
    assert int(p.counters["front_pending"]) == 0 and int(p.counters["spool_events"]) == 0


def test_a_full_ring_whose_writer_is_only_slow_is_waited_for_not_spilled(placement_factory):
    p = placement_factory(lanes=1, lane_capacity=8, spill_after_s=5.0)
    stop = threading.Event()
    got = []

    def slow_writer():
        while not stop.is_set():
            got.extend(drain(p.ring))
            time.sleep(0.005)

    t = threading.Thread(target=slow_writer)
    t.start()
    try:
        p.place(records(200))
    finally:
        time.sleep(0.05)
        stop.set()
        t.join()
    got += drain(p.ring)
    assert p.spool.events == 0 and int(p.counters["spooled_events"]) == 0
    assert [seq for _, seq in got] == list(range(200))


def test_stop_with_the_ring_full_and_the_spool_failing_counts_and_logs_every_loss(placement_factory, caplog):
    stopping = threading.Event()
    p = placement_factory(lanes=1, lane_capacity=8, stopping=stopping.is_set)
    failpoints.arm("spool.write", "eio")
    threading.Timer(0.3, stopping.set).start()  # the stop arrives while place() waits for the disk
    with caplog.at_level(logging.ERROR):
        p.place(records(20))
    assert p.ring.used() == 8 and p.spool.events == 0
    assert int(p.counters["lost"]) == 12 and int(p.counters["front_pending"]) == 0
    assert "LOST 12 accepted events" in caplog.text


def test_a_failing_spool_disk_holds_records_in_hand_until_it_works_again(placement_factory):
    p = placement_factory(lanes=1, lane_capacity=4)
    failpoints.arm("spool.write", "1*eio")  # one failure, then the disk works (retried after SPOOL_RETRY_S)
    p.place(records(10))
    assert p.ring.used() == 4 and p.spool.events == 6 and int(p.counters["lost"]) == 0
    assert int(p.counters["front_pending"]) == 6


def test_a_restarted_front_finds_the_spool_of_the_last_run_and_counts_it_received(placement_factory, tmp_path):
    p = placement_factory(lanes=1, lane_capacity=4)
    p.place(records(10))  # 6 spilled
    p.close()
    again = Placement(ring=p.ring, spool=Spool(tmp_path / "spool", RECORD_DTYPE, 1 << 20),
                      counters=np.zeros((), FRONT_DTYPE), stopping=lambda: False)
    again.open()  # a new run: its counters start at 0
    try:
        assert int(again.counters["received_events"]) == 6 and int(again.counters["replayed_events"]) == 6
        assert int(again.counters["front_pending"]) == 6
    finally:
        again.close()
