"""The ack table: counts per tag and lane, stale tags ignored, replies once complete."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from ingestor.acks import SLOTS, AckTable, Replies


@pytest.fixture
def table():
    t = AckTable.create(lanes=2)
    yield t
    t.unlink()
    t.close()


def test_counts_add_up_over_lanes_and_only_for_the_open_tag(table):
    table.open(5)
    table.count(0, np.array([5, 5, 0, 5 + SLOTS], np.uint64), np.array([False, True, False, False]))
    table.count(1, np.array([5], np.uint64), failed=True)
    assert table.progress(np.array([5])).tolist() == [[3, 1, 1]]  # the stale tag 5+SLOTS (same row) is ignored


def test_records_counted_without_a_duplicate_mask_are_none_of_them_duplicates(table):
    table.open(9)
    table.count(0, np.array([9, 9], np.uint64))
    assert table.progress(np.array([9])).tolist() == [[2, 0, 0]]


def test_reply_waits_for_every_accepted_event_then_reports_counts(table):
    replies = Replies(table)
    tag = replies.add(b"id", b"tok", accepted=3, invalid=2)
    table.count(0, np.array([tag, tag], np.uint64), np.array([False, True]))
    assert list(replies.ready()) == []
    table.count(1, np.array([tag], np.uint64), np.array([False]))
    (identity, token, reply), = replies.ready()
    assert (identity, token) == (b"id", b"tok")
    assert msgspec.msgpack.decode(reply) == {"accepted": 2, "duplicates": 1, "invalid": 2}
    assert len(replies) == 0


def test_message_without_accepted_events_is_answered_at_once(table):
    replies = Replies(table)
    replies.add(b"id", b"t", accepted=0, invalid=4)
    (_, _, reply), = replies.ready()
    assert msgspec.msgpack.decode(reply) == {"accepted": 0, "duplicates": 0, "invalid": 4}


def test_a_message_never_counted_is_given_up_after_600_s_and_counted(table, monkeypatch):
    # its counts died with a writer killed between COMMIT and counting: no reply, the sender re-sends
    import ingestor.acks as acks

    replies = Replies(table)
    now = [1000.0]
    monkeypatch.setattr(acks.time, "monotonic", lambda: now[0])
    tag = replies.add(b"id", b"t", accepted=2, invalid=0)
    table.count(0, np.array([tag], np.uint64), np.array([False]))  # one of two counted
    now[0] += acks.EXPIRE_S - 1
    assert list(replies.ready()) == [] and replies.expired == 0
    now[0] += 2
    assert list(replies.ready()) == [] and replies.expired == 1 and len(replies) == 0
