"""ingestor/alibi.py: the chain's arithmetic. A writer's encoding of ring records and a verifier's encoding of the
stored rows are the same bytes (checked through a real PostgreSQL), and each link depends on its scale's past only."""

from __future__ import annotations

import time

import msgspec
import numpy as np

from ingestor import alibi, copy_payload
from ingestor.protocol import Event, RecordBuilder

from .archive_fixtures import ODD_VALUES

NOW_US = time.time_ns() // 1000


def records(events: list[Event]) -> np.ndarray:
    b = RecordBuilder()
    for e in events:
        b.add(e, NOW_US)
    return b.build(time.time_ns())


def odd_events(n: int = 60) -> list[Event]:
    """Events of 3 scales with NULL fields, empty strings, 64-byte texts and the archive's odd values."""
    values = ODD_VALUES + ["x" * 64, "é" * 32]
    return [Event(scale_id=1 + i % 3, seq=i // 3, ts=1_700_000_000_000 + i,
                  **{f"data_{k}": None if (i + k) % 4 == 0 else values[(i * 5 + k) % len(values)] for k in range(1, 6)})
            for i in range(n)]


def test_the_encoding_of_ring_records_equals_the_encoding_of_the_rows_postgresql_stored(conn):
    recs = records(odd_events())
    with conn.cursor() as cur, cur.copy(copy_payload.COPY_SQL) as c:
        c.write(copy_payload.build(recs, NOW_US))
    rows = conn.execute("SELECT scale_id, seq, measured_at, created_at, data_1->>'val', data_2->>'val', data_3->>'val', "
                        "data_4->>'val', data_5->>'val' FROM weighing_logs ORDER BY seq, scale_id").fetchall()
    order = np.lexsort((recs["scale_id"], recs["seq"]))  # the rows' order
    from_records = alibi.canonical_from_records(recs[order], NOW_US)
    from_rows = alibi.canonical_from_rows(rows)
    assert from_rows == from_records
    assert from_rows.event(0)[:4] == (1).to_bytes(4, "little") and len(from_rows.offsets) == len(rows) + 1


def test_text_past_its_length_in_a_reused_slot_does_not_change_the_encoding():
    recs = records(odd_events(6))
    dirty = recs.copy()
    text = dirty["text"].view(np.uint8).reshape(len(dirty), 5, 64)
    lengths = np.maximum(dirty["text_len"], 0)
    text[np.arange(64) >= lengths[:, :, None]] = 0xAB  # what an earlier record left in the slot
    assert alibi.canonical_from_records(dirty, NOW_US) == alibi.canonical_from_records(recs, NOW_US)


def test_each_link_depends_on_its_scale_s_past_only_and_on_every_byte_of_its_event():
    events = odd_events()
    links = alibi.chain(alibi.canonical_from_records(records(events), NOW_US), heads := {})
    assert len(set(links)) == len(links) and set(heads) == {1, 2, 3}
    one = [e for e in events if e.scale_id == 1]
    alone = alibi.chain(alibi.canonical_from_records(records(one), NOW_US), {})  # without the others interleaved
    assert alone == [link for link, e in zip(links, events) if e.scale_id == 1]
    changed = list(one)
    changed[4] = msgspec.structs.replace(one[4], data_1="12.51")
    after = alibi.chain(alibi.canonical_from_records(records(changed), NOW_US), {})
    assert after[:4] == alone[:4] and all(a != b for a, b in zip(after[4:], alone[4:]))  # from the change on
    resumed = alibi.chain(alibi.canonical_from_records(records(one[10:]), NOW_US), {1: alone[9]})  # from a stored head
    assert resumed == alone[10:]
    first = alibi.canonical_from_records(records(one[:1]), NOW_US)
    assert alibi.chain(first, {})[0] != alibi.chain(first, {1: alibi.genesis(2)})[0]
