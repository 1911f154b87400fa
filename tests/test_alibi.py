"""ingestor/alibi.py: the chain's arithmetic. A writer's encoding of ring records and a verifier's encoding of the
stored rows are the same bytes (checked through a real PostgreSQL), and each link depends on its scale's past only."""

from __future__ import annotations

import time

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
    from_records = alibi.canonical_from_records(recs, NOW_US)
    from_records = from_records[np.lexsort((from_records["scale_id"], from_records["seq"]))]
    assert alibi.canonical_from_rows(rows).tobytes() == from_records.tobytes()
    assert alibi.CANON_BYTES == 353


def test_text_past_its_length_in_a_reused_slot_does_not_change_the_encoding():
    recs = records(odd_events(6))
    dirty = recs.copy()
    text = dirty["text"].view(np.uint8).reshape(len(dirty), 5, 64)
    lengths = np.maximum(dirty["text_len"], 0)
    text[np.arange(64) >= lengths[:, :, None]] = 0xAB  # what an earlier record left in the slot
    assert alibi.canonical_from_records(dirty, NOW_US).tobytes() == alibi.canonical_from_records(recs, NOW_US).tobytes()


def test_each_link_depends_on_its_scale_s_past_only_and_on_every_byte_of_its_event():
    canon = alibi.canonical_from_records(records(odd_events()), NOW_US)
    links = alibi.chain(canon, heads := {})
    assert len(set(links)) == len(links) and set(heads) == {1, 2, 3}
    one = canon[canon["scale_id"] == 1]
    alone = alibi.chain(one, {})  # scale 1 without the others interleaved: the same links
    assert alone == [link for link, s in zip(links, canon["scale_id"]) if s == 1]
    changed = one.copy()
    changed[4]["text_1"] = b"12.51"
    after = alibi.chain(changed, {})
    assert after[:4] == alone[:4] and all(a != b for a, b in zip(after[4:], alone[4:]))  # from the change on
    resumed = alibi.chain(one[10:], {1: alone[9]})  # a writer resuming from a stored head
    assert resumed == alone[10:]
    assert alibi.chain(one[:1], {})[0] != alibi.chain(one[:1].copy(), {1: alibi.genesis(2)})[0]
