"""The on-disk spool: FIFO order, bounds, reopening, torn tails and corrupt blocks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ingestor.errors import SpoolError
from ingestor.protocol import RECORD_DTYPE
from ingestor.spool import Spool


def records(start: int, n: int) -> np.ndarray:
    r = np.zeros(n, RECORD_DTYPE)
    r["scale_id"] = 7
    r["seq"] = np.arange(start, start + n)
    return r


def drain(spool: Spool) -> list[int]:
    seqs = []
    while (block := spool.peek()) is not None:
        seqs += block["seq"].tolist()
        spool.consume()
    return seqs


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


def test_spool_returns_blocks_in_order_across_segments_and_frees_them(tmp_path):
    spool = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30, segment_bytes=4096)
    for i in range(10):
        spool.append(records(i * 5, 5))
    assert spool.events == 50
    assert len(segments(tmp_path)) > 1
    assert drain(spool) == list(range(50))
    assert spool.events == 0 and spool.bytes == 0
    assert segments(tmp_path) == []


def test_spool_reopened_replays_only_what_was_not_consumed(tmp_path):
    spool = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)
    for i in range(3):
        spool.append(records(i * 10, 10))
    spool.peek()
    spool.consume()
    spool.close()
    again = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)
    assert again.events == 20
    again.append(records(30, 10))  # appends after a reopen go behind the old content
    assert drain(again) == list(range(10, 40))


def test_spool_put_back_first_is_read_before_older_content(tmp_path):
    spool = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)
    spool.append(records(100, 3))
    spool.append(records(103, 3))
    spool.peek()
    spool.consume()
    spool.append(records(0, 2), first=True)
    spool.close()
    again = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)
    assert drain(again) == [0, 1, 103, 104, 105]


def test_spool_has_room_only_within_max_bytes(tmp_path):
    one = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30).block_bytes(100)
    spool = Spool(tmp_path, RECORD_DTYPE, max_bytes=one + one // 2)
    assert spool.has_room(100)
    spool.append(records(0, 100))
    assert spool.bytes == one
    assert not spool.has_room(100)
    assert spool.has_room(10)


def test_spool_torn_tail_is_cut_and_never_replayed(tmp_path):
    spool = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)
    spool.append(records(0, 4))
    spool.append(records(4, 4))
    spool.close()
    (segment,) = segments(tmp_path)
    size = segment.stat().st_size
    os.truncate(segment, size - 100)  # a power cut in the middle of the second block
    again = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)
    assert again.events == 4
    assert again.cut_bytes == size - 100 - (size - 4 * RECORD_DTYPE.itemsize - 16)
    again.append(records(8, 2))
    assert drain(again) == [0, 1, 2, 3, 8, 9]


def test_spool_corrupt_block_is_cut_with_everything_after_it_in_its_segment(tmp_path):
    spool = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)
    for i in range(3):
        spool.append(records(i * 2, 2))
    spool.close()
    (segment,) = segments(tmp_path)
    block = 16 + 2 * RECORD_DTYPE.itemsize
    data = bytearray(segment.read_bytes())
    data[32 + block + 40] ^= 0xFF  # one flipped bit-pattern inside the second block's payload
    segment.write_bytes(bytes(data))
    again = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)
    assert drain(again) == [0, 1]
    assert again.cut_bytes == 2 * block


def test_spool_refuses_segments_of_another_record_layout(tmp_path):
    other = np.dtype([("scale_id", "<i4"), ("seq", "<i8")])
    spool = Spool(tmp_path, other, max_bytes=1 << 30)
    spool.append(np.zeros(3, other))
    spool.close()
    with pytest.raises(SpoolError, match="another version"):
        Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)


def test_spool_that_cannot_be_created_names_the_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="file/spool"):
        Spool(blocker / "spool", RECORD_DTYPE, max_bytes=1 << 30)


def test_spool_requeued_rest_of_a_block_is_read_first_and_once(tmp_path):
    spool = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)
    spool.append(records(0, 6))
    spool.append(records(6, 3))
    block = spool.peek()
    spool.requeue_oldest(block[4:])  # 0..3 went into the ring
    spool.close()
    again = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30)
    assert again.events == 5
    assert drain(again) == [4, 5, 6, 7, 8]
    assert segments(tmp_path) == []


@pytest.mark.parametrize("failpoint", ["spool.create_segment", "spool.write", "spool.fsync"])
@pytest.mark.parametrize("error", ["enospc", "eio"])
def test_failed_append_leaves_the_spool_consistent_and_the_next_append_works(tmp_path, failpoint, error):
    # issue 10 #4: a failed segment creation left `_active` set; the next append raised
    # KeyError and the front crash-looped, losing events
    from ingestor import failpoints

    spool = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30, segment_bytes=4096)
    spool.append(records(0, 5))
    spool.close()
    spool = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30, segment_bytes=4096)  # next append: a new segment
    failpoints.arm(failpoint, f"1*{error}")
    try:
        with pytest.raises(SpoolError, match="cannot write 5 events"):
            spool.append(records(100, 5))
        spool.append(records(5, 5))
    finally:
        failpoints.disarm_all()
    assert spool.events == 10
    spool.close()
    again = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30, segment_bytes=4096)
    assert again.events == 10 and again.cut_bytes == 0
    assert drain(again) == list(range(10))  # the failed block is nowhere


def test_failed_unlink_or_position_write_replays_blocks_never_loses_them(tmp_path):
    from ingestor import failpoints

    spool = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30, segment_bytes=64)
    for i in range(3):
        spool.append(records(i * 2, 2))
    failpoints.arm("spool.unlink", "1*eio")
    failpoints.arm("spool.position", "eio")
    try:
        assert drain(spool) == list(range(6))
        spool.append(records(6, 2))  # a new segment number, not the one left on disk
    finally:
        failpoints.disarm_all()
    spool.close()
    again = Spool(tmp_path, RECORD_DTYPE, max_bytes=1 << 30, segment_bytes=64)
    assert set(drain(again)) >= {0, 1, 6, 7}  # replayed (duplicates downstream), the new block kept
