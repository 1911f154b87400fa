"""ingestor/chains.py: a writer's links extend exactly the heads given, never past the record numbers reserved."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestor import alibi
from ingestor.alibi import Head
from ingestor.chains import Chains, Reservation, Unreserved, locked_heads
from ingestor.errors import DatabaseError
from ingestor.protocol import _TS_MIN_MS, Event, RecordBuilder
from ingestor.stats import FRONT_DTYPE, WRITER_DTYPE

CREATED_US = 1_764_000_000_000_000


def records(keys: list[tuple[int, int]]) -> np.ndarray:
    b = RecordBuilder(oldest_ms=_TS_MIN_MS)
    for scale, seq in keys:
        b.add(Event(scale_id=scale, seq=seq, ts=1000 + seq, data_1=f"{seq}.0"), time.time_ns() // 1000)
    return b.build(time.time_ns())


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 10**6)), min_size=1, max_size=40, unique=True))
def test_each_link_is_the_sha256_of_the_scale_s_previous_link_and_the_event(keys):
    batch = records(keys)
    heads = {1: Head(7, b"\x01" * 32)}  # scale 1 continues a chain; the others begin theirs
    chained = Chains().link(batch, CREATED_US, heads)
    encoded = alibi.canonical_from_records(batch, CREATED_US)
    last = {s: (7, b"\x01" * 32) if s == 1 else (0, alibi.genesis(s)) for s in {k[0] for k in keys}}
    for i, (scale, _) in enumerate(keys):
        no, link = last[scale]
        event = encoded.data[encoded.offsets[i]:encoded.offsets[i + 1]]
        assert chained.record_no[i] == no + 1
        assert bytes(chained.link[i]) == hashlib.sha256(link + event).digest()
        last[scale] = (no + 1, bytes(chained.link[i]))


def test_the_moved_heads_become_the_guess_only_once_committed():
    chains = Chains()
    chains.link(records([(3, 1), (3, 2)]), CREATED_US, chains.guess([3]))
    moved = chains.moved_heads()
    assert moved[3][0] == 2
    assert chains.guess([3]) == {3: Head(0, alibi.genesis(3))}  # not committed yet
    chains.committed()
    assert chains.guess([3]) == {3: Head(*moved[3])}
    chains.forget()
    assert chains.guess([3]) == {3: Head(0, alibi.genesis(3))}


def test_a_number_past_the_reservation_is_refused_and_reported_first():
    front, mine = np.zeros((), FRONT_DTYPE), np.zeros((), WRITER_DTYPE)
    front["records_reserved"], front["record_floor"] = 101, 99
    chains = Chains(Reservation(front, mine))
    assert chains.guess([5]) == {5: Head(99, alibi.genesis(5))}  # a chain begun after a skip starts at the floor
    chains.link(records([(5, 1), (5, 2)]), CREATED_US, chains.guess([5]))  # 100, 101: within
    with pytest.raises(Unreserved) as refused:
        chains.link(records([(5, 3), (5, 4)]), CREATED_US, {5: Head(101, b"\x00" * 32)})
    assert (refused.value.wanted, refused.value.reserved) == (103, 101)
    assert mine["record_no_max"] == 103  # what it wants, told before any commit


def test_a_locked_head_not_begun_starts_at_the_floor_from_its_genesis():
    assert locked_heads({1: (None, None), 2: (5, b"\x02" * 32)}, floor=40) == {
        1: Head(40, alibi.genesis(1)), 2: Head(5, b"\x02" * 32)}


def test_a_locked_head_with_a_number_and_no_link_is_refused_naming_the_scale():
    with pytest.raises(DatabaseError, match="scale 7 has record number 12 and no link"):
        locked_heads({1: (None, None), 7: (12, None)})
