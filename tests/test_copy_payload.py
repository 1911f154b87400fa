"""Binary COPY payloads, checked by PostgreSQL itself: JSONB shape, NULLs, text, time zones."""

from __future__ import annotations

import datetime as dt
import time

import psycopg

from ingestor import copy_payload
from ingestor.protocol import _TS_MIN_MS, Event, RecordBuilder

NOW_US = time.time_ns() // 1000


def build(events: list[Event]):
    b = RecordBuilder(oldest_ms=_TS_MIN_MS)  # small, readable ts: the front's floor is tested in test_protocol
    for e in events:
        b.add(e, NOW_US)
    return b.build(time.time_ns())


def copy(conn: psycopg.Connection, records, created_us: int = NOW_US) -> None:
    with conn.cursor() as cur, cur.copy(copy_payload.COPY_SQL) as c:
        c.write(copy_payload.build(records, created_us))


def test_copy_stores_jsonb_val_objects_and_nulls(conn):
    copy(conn, build([Event(scale_id=1, seq=5, ts=1_700_000_000_123, data_1="12.50", data_2=3, data_3=None, data_5=2.25)]))
    row = conn.execute("SELECT scale_id, seq, data_1, data_2, data_3, data_4, data_5 FROM weighing_logs").fetchone()
    assert row == (1, 5, {"val": "12.50"}, {"val": "3"}, None, None, {"val": "2.25"})
    kinds = conn.execute("SELECT jsonb_typeof(data_1), data_1->>'val' FROM weighing_logs").fetchone()
    assert kinds == ("object", "12.50")


def test_copy_keeps_non_ascii_and_escaped_text_exact(conn):
    texts = ["Gewicht über 5 kg", "日本語のはかり", 'quote " and \\ backslash', "tab\there\nnewline", "é" * 32, "\x01ctl"]
    copy(conn, build([Event(scale_id=i + 1, seq=1, ts=1_700_000_000_000, data_4=t) for i, t in enumerate(texts)]))
    stored = conn.execute("SELECT data_4->>'val' FROM weighing_logs ORDER BY scale_id").fetchall()
    assert [r[0] for r in stored] == texts


def test_copy_stores_instants_whatever_the_offset(conn):
    local = dt.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    copy(conn, build([Event(scale_id=1, seq=1, ts=local), Event(scale_id=2, seq=1, ts=0)]), created_us=1_000_000)
    conn.execute("SET TimeZone = 'America/New_York'")  # the session zone must not matter
    rows = conn.execute("SELECT measured_at, created_at FROM weighing_logs ORDER BY scale_id").fetchall()
    assert rows[0][0] == local
    assert rows[1][0] == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert rows[0][1] == dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC)


def test_copy_of_many_rows_matches_row_by_row(conn):
    events = [Event(scale_id=i % 37 + 1, seq=i, ts=1_700_000_000_000 + i, data_1=f"{i/7:.3f}", data_2="kg" if i % 3 else None)
              for i in range(3000)]
    copy(conn, build(events))
    got = conn.execute("SELECT scale_id, seq, data_1->>'val', data_2->>'val' FROM weighing_logs ORDER BY seq").fetchall()
    assert got == [(e.scale_id, e.seq, e.data_1, e.data_2) for e in events]


def test_rows_land_in_the_partition_of_their_created_day(conn):
    copy(conn, build([Event(scale_id=1, seq=1, ts=0)]))
    part = conn.execute("SELECT tableoid::regclass::text FROM weighing_logs").fetchone()[0]
    assert part == "weighing_logs_p" + dt.datetime.now(dt.UTC).strftime("%Y%m%d")
