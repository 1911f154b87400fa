"""The owner's side of the shared blocks (ingestor/blocks.py): what the ring holds at a stop is kept in front
of the spool or counted lost, never dropped silently; the blocks are recorded at creation and gone at exit."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from ingestor import failpoints, leftovers
from ingestor.blocks import OwnedBlocks
from ingestor.errors import SharedMemoryError
from ingestor.protocol import RECORD_DTYPE
from ingestor.ring import Ring
from ingestor.spool import Spool
from ingestor.stats import Counters


def records(keys: list[tuple[int, int]]) -> np.ndarray:
    out = np.zeros(len(keys), RECORD_DTYPE)
    out["scale_id"], out["seq"] = zip(*keys) if keys else ((), ())
    return out


@pytest.fixture
def blocks(tmp_path):
    made = OwnedBlocks.create(2, 16, tmp_path, multiprocessing.get_context("spawn"))
    yield made
    failpoints.disarm_all()
    if made.ring.spec.name:
        try:
            made.destroy()
        except (FileNotFoundError, SharedMemoryError):
            pass  # the test destroyed them itself


def spooled(directory: Path) -> list[tuple[int, int]]:
    spool = Spool(directory, RECORD_DTYPE, 1 << 20)
    got = []
    try:
        while (block := spool.peek()) is not None:
            got += list(zip(block["scale_id"].tolist(), block["seq"].tolist()))
            spool.consume()
    finally:
        spool.close()
    return got


def test_the_blocks_are_recorded_for_the_next_start_and_forgotten_once_destroyed(tmp_path):
    b = OwnedBlocks.create(2, 16, tmp_path, multiprocessing.get_context("spawn"))
    names = [b.ring.spec.name, b.counters.name, b.acks.name]
    record = (tmp_path / leftovers.RECORD).read_text()
    assert all(name in record for name in names) and b.ring.capacity == 16 and len(b.ring.lanes) == 2
    shared = b.shared
    assert (shared.ring, shared.counters, shared.acks) == (b.ring.spec, b.counters.name, b.acks.name)
    b.destroy()
    assert not (tmp_path / leftovers.RECORD).exists()
    with pytest.raises(SharedMemoryError):
        Counters.attach(names[1], 2)


def test_each_lane_gets_at_least_one_slot_whatever_the_ring_capacity(tmp_path):
    b = OwnedBlocks.create(3, 1, tmp_path, multiprocessing.get_context("spawn"))
    try:
        assert [lane.capacity for lane in b.ring.lanes] == [1, 1, 1]
    finally:
        b.destroy()


def test_what_the_ring_holds_at_a_stop_goes_in_front_of_the_spool_lane_by_lane(blocks, tmp_path):
    directory = tmp_path / "spool"
    older = Spool(directory, RECORD_DTYPE, 1 << 20)
    older.append(records([(9, 1)]))  # what the front had spooled before the stop: it comes after the ring's
    older.close()
    lane0, lane1 = blocks.ring.lanes
    assert lane0.put(records([(2, 1), (2, 2)])) == 2 and lane1.put(records([(3, 1)])) == 1
    assert blocks.spool_leftovers(directory, 1 << 20)
    assert spooled(directory) == [(2, 1), (2, 2), (3, 1), (9, 1)]
    assert blocks.ring.used() == 0 and int(blocks.counters.front["lost"]) == 0


def test_an_empty_ring_touches_no_spool(blocks, tmp_path):
    assert blocks.spool_leftovers(tmp_path / "spool", 1 << 20)
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize("failure", ["supervisor.spool_leftovers=enospc", "supervisor.spool_leftovers=eio",
                                     "spool.write=enospc", "spool.fsync=eio", "spool.create_segment=enospc"])
def test_a_spool_that_cannot_take_the_ring_s_records_counts_them_lost_and_empties_the_ring(blocks, tmp_path,
                                                                                          failure, caplog):
    name, action = failure.split("=")
    failpoints.arm(name, action)
    blocks.ring.lanes[0].put(records([(1, 1), (1, 2), (1, 3)]))
    blocks.ring.lanes[1].put(records([(2, 1)]))
    assert not blocks.spool_leftovers(tmp_path / "spool", 1 << 20)
    assert int(blocks.counters.front["lost"]) == 4 and blocks.ring.used() == 0
    assert "LOST 4 accepted events left in the ring" in caplog.text


def test_the_spool_s_size_bound_does_not_turn_the_ring_s_accepted_records_away(blocks, tmp_path):
    blocks.ring.lanes[0].put(records([(1, s) for s in range(8)]))
    assert blocks.spool_leftovers(tmp_path / "spool", 64)  # smaller than their one block: kept all the same
    assert spooled(tmp_path / "spool") == [(1, s) for s in range(8)]
    assert int(blocks.counters.front["lost"]) == 0 and blocks.ring.used() == 0


def test_a_ring_attached_by_a_child_sees_the_blocks_the_owner_created(blocks):
    ring = Ring.attach(blocks.ring.spec, RECORD_DTYPE, blocks.ring.handles[1])
    try:
        blocks.ring.lanes[1].put(records([(5, 7)]))
        assert ring.lanes[1].used() == 1
    finally:
        ring.close()
