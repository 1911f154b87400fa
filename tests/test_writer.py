"""A writer against a real PostgreSQL: transactions, latest-wins, isolation of rejected rows, crash recovery."""

from __future__ import annotations

import datetime as dt
import json
import time

import msgspec
import numpy as np
import pytest

from ingestor import writer
from ingestor.deadletter import DeadLetter, read
from ingestor.protocol import _TS_MIN_MS, Event, RecordBuilder
from ingestor.stats import WRITER_DTYPE
from ingestor.writer import SmallBatch, Writer

from .fix_ring import writer_args


@pytest.fixture
def ring(ring_factory):
    return ring_factory(lanes=1, lane_capacity=4096)


def make_writer(ring, dsn, tmp_path, ring_id=None):
    counters = np.zeros((), WRITER_DTYPE)
    return Writer(writer_args(ring, dsn, tmp_path / "dl", ring_id=ring_id), ring.lanes[0], counters, lambda: True)


def put(ring, events):
    b = RecordBuilder(oldest_ms=_TS_MIN_MS)  # small, readable ts: the front's floor is tested in test_protocol
    for e in events:
        b.add(e, time.time_ns() // 1000)
    ring.lanes[0].put_all(b.build(time.time_ns()))


def test_latest_state_is_greatest_ts_then_seq_even_out_of_order(ring, dsn, conn, tmp_path):
    put(ring, [
        Event(scale_id=1, seq=10, ts=5000, data_1="newest"),
        Event(scale_id=1, seq=9, ts=4000, data_1="older"),
        Event(scale_id=2, seq=1, ts=1000, data_1="a"),
        Event(scale_id=2, seq=2, ts=1000, data_1="same ts, higher seq"),
    ])
    w = make_writer(ring, dsn, tmp_path)
    w.run()
    # a late, older event in a later batch must not overwrite
    put(ring, [Event(scale_id=1, seq=8, ts=3000, data_1="late"), Event(scale_id=2, seq=3, ts=999, data_1="late")])
    w = make_writer(ring, dsn, tmp_path)
    w.run()
    states = conn.execute("SELECT scale_id, seq, data_1->>'val' FROM scale_current_states ORDER BY 1").fetchall()
    assert states == [(1, 10, "newest"), (2, 2, "same ts, higher seq")]
    assert conn.execute("SELECT count(*) FROM weighing_logs").fetchone()[0] == 6
    assert ring.used() == 0


def test_rejected_row_is_dead_lettered_and_the_rest_of_the_batch_is_committed(ring, dsn, conn, tmp_path):
    conn.execute("ALTER TABLE weighing_logs ADD CONSTRAINT no_13 CHECK (seq <> 13)")
    put(ring, [Event(scale_id=1 + i % 5, seq=i, ts=1000 + i) for i in range(40)])
    w = make_writer(ring, dsn, tmp_path)
    w.run()
    seqs = [r[0] for r in conn.execute("SELECT seq FROM weighing_logs ORDER BY seq")]
    assert seqs == [i for i in range(40) if i != 13]
    letters = [dl for _, dl in read(tmp_path / "dl")]
    assert len(letters) == 1
    assert letters[0].sqlstate == "23514" and "no_13" in letters[0].reason
    assert json.loads(letters[0].frame)["seq"] == 13
    assert int(w.counters["failed"]) == 1 and int(w.counters["persisted"]) == 39
    assert ring.used() == 0


def test_restarted_writer_releases_what_its_predecessor_committed(ring, dsn, conn, tmp_path):
    put(ring, [Event(scale_id=1, seq=i, ts=1000 + i) for i in range(10)])
    # the predecessor committed these 10 and died before releasing them
    w = make_writer(ring, dsn, tmp_path)
    w.pool.open(wait=True)
    w._commit(ring.lanes[0].peek(10), 0)
    ring.lanes[0]._pos[8] -= 10  # undo its release, as if killed right after COMMIT
    w.pool.close()
    successor = make_writer(ring, dsn, tmp_path)
    successor.run()
    assert conn.execute("SELECT count(*), count(DISTINCT seq) FROM weighing_logs").fetchone() == (10, 10)
    assert ring.used() == 0 and int(successor.counters["persisted"]) == 10


def test_resent_events_are_counted_as_duplicates_and_stored_once(ring, dsn, conn, tmp_path):
    put(ring, [Event(scale_id=1, seq=i, ts=1000 + i) for i in range(5)] + [Event(scale_id=1, seq=2, ts=1002)])
    w = make_writer(ring, dsn, tmp_path)
    w.run()
    assert (int(w.counters["persisted"]), int(w.counters["duplicates"])) == (5, 1)
    # a later re-send, mixed with an out-of-order event never stored before
    put(ring, [Event(scale_id=1, seq=3, ts=1003), Event(scale_id=1, seq=100, ts=900)])
    w2 = make_writer(ring, dsn, tmp_path)
    w2.counters[...] = w.counters
    w2.run()
    assert (int(w2.counters["persisted"]), int(w2.counters["duplicates"])) == (6, 2)
    assert conn.execute("SELECT array_agg(seq ORDER BY seq) FROM weighing_logs").fetchone()[0] == [0, 1, 2, 3, 4, 100]
    # the out-of-order event is stored but is not the latest state (older ts)
    assert conn.execute("SELECT seq FROM scale_current_states").fetchone()[0] == 4


def checkpoint(conn) -> int:
    return conn.execute("SELECT position FROM ingestor_checkpoints WHERE instance = 'test' AND lane = 0").fetchone()[0]


def test_checkpoint_after_a_bisect_is_the_lane_position_so_a_successor_releases_nothing_unwritten(
        ring, dsn, conn, tmp_path):
    # issue 10 #1: the second half of a bisect counted its offset from a tail that had
    # already moved (checkpoint 1760 after 1,010 events); a successor then released
    # 750 events that were never written
    conn.execute("ALTER TABLE weighing_logs ADD CONSTRAINT no666 CHECK (scale_id <> 666)")
    put(ring, [Event(scale_id=s, seq=1, ts=1000) for s in range(1, 1001)])
    w = make_writer(ring, dsn, tmp_path)
    w.run()
    assert checkpoint(conn) == ring.lanes[0].tail == 1000
    put(ring, [Event(scale_id=s, seq=2, ts=2000) for s in range(1, 1001)])
    successor = make_writer(ring, dsn, tmp_path)  # as if the first had died after the bisect
    successor.counters[...] = w.counters
    successor.run()
    assert checkpoint(conn) == ring.lanes[0].tail == 2000 and ring.used() == 0
    assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (1998, 1998)
    assert (int(successor.counters["persisted"]), int(successor.counters["failed"])) == (1998, 2)


def test_dead_letter_disk_failing_in_a_writer_logs_the_letter_and_writes_the_rest(ring, dsn, conn, tmp_path, caplog):
    # issue 10 #2: an OSError from the dead-letter file crashed the writer over and over,
    # releasing events unwritten
    from ingestor import failpoints

    conn.execute("ALTER TABLE weighing_logs ADD CONSTRAINT no_13 CHECK (seq <> 13)")
    put(ring, [Event(scale_id=1 + i % 5, seq=i, ts=1000 + i) for i in range(40)])
    failpoints.arm("deadletter.write", "enospc")
    try:
        w = make_writer(ring, dsn, tmp_path)
        w.run()
    finally:
        failpoints.disarm_all()
    assert [r[0] for r in conn.execute("SELECT seq FROM weighing_logs ORDER BY seq")] == [i for i in range(40) if i != 13]
    assert (int(w.counters["persisted"]), int(w.counters["failed"]), int(w.counters["dead_letter_errors"])) == (39, 1, 1)
    assert ring.used() == 0 and checkpoint(conn) == 40
    assert sum(p.stat().st_size for p in (tmp_path / "dl").glob("*.jsonl")) == 0  # no torn line either
    logged = [r.getMessage() for r in caplog.records if "Could not write 1 dead letter" in r.getMessage()]
    assert len(logged) == 1 and "No space left on device" in logged[0]
    letter = msgspec.json.decode(logged[0].splitlines()[1], type=DeadLetter)
    assert (letter.kind, letter.sqlstate, json.loads(letter.frame)["seq"]) == ("rejected_by_database", "23514", 13)


def _paths_taken(monkeypatch) -> dict[str, int]:
    """Counts of batches written by each path of Writer._commit (small: one statement; general: COPY)."""
    taken = {"small": 0, "general": 0}
    small, general = Writer._write_small, Writer._write_general

    def counted_small(self, *args):
        written = small(self, *args)
        taken["small"] += written is not None
        return written

    def counted_general(self, *args):
        taken["general"] += 1
        return general(self, *args)

    monkeypatch.setattr(Writer, "_write_small", counted_small)
    monkeypatch.setattr(Writer, "_write_general", counted_general)
    return taken


def test_the_small_batch_arguments_are_the_sql_function_s_parameters_by_name_and_order(conn):
    """The statement passes SmallBatch by name; its field order is the function's too (sql/010_alibi_chain.sql)."""
    names, types = conn.execute(
        "SELECT proargnames, proargtypes::regtype[]::text[] FROM pg_proc WHERE proname = 'ingestor_write_small_batch'"
    ).fetchone()
    assert names == ["p_" + field for field in SmallBatch._fields]
    binary = {f for f in SmallBatch._fields if f"%({f})b" in writer.WRITE_SMALL_BATCH_SQL}
    assert binary == {f for f, t in zip(SmallBatch._fields, types, strict=True) if t.endswith("[]")}  # all arrays


@pytest.mark.parametrize("client_encoding", [None, "LATIN1"])
def test_a_small_batch_in_one_statement_stores_what_copy_stores(ring, dsn, conn, tmp_path, monkeypatch,
                                                                client_encoding):
    # migration 007: the same events written by each path give the same history rows and latest states,
    # whatever client encoding the DSN asks for (the small batch's texts go as binary UTF-8)
    from ingestor import writer

    if client_encoding:
        dsn += f" client_encoding={client_encoding}"
    taken = _paths_taken(monkeypatch)
    texts = ['12.5 "kg"', "back\\slash", "21.4 °C", "\t tab \n", "x" * 64, "", None]
    events = lambda base: [  # noqa: E731
        Event(scale_id=base + i % 3, seq=i // 3, ts=dt.datetime(2026, 11, 25, 10, 0, 7 - i, 123456, dt.UTC),
              **{f"data_{k + 1}": texts[(i + k) % len(texts)] for k in range(5)})
        for i in range(8)
    ]
    put(ring, events(1))
    make_writer(ring, dsn, tmp_path).run()
    assert taken == {"small": 1, "general": 0}
    monkeypatch.setattr(writer, "SMALL_BATCH", 0)
    put(ring, events(101))
    make_writer(ring, dsn, tmp_path).run()
    assert taken == {"small": 1, "general": 1}

    def rows(table, order):
        return conn.execute(f"SELECT scale_id % 100, seq, measured_at, data_1, data_2, data_3, data_4, data_5 "
                            f"FROM {table} WHERE scale_id < 100 ORDER BY {order}").fetchall(), \
            conn.execute(f"SELECT scale_id % 100, seq, measured_at, data_1, data_2, data_3, data_4, data_5 "
                         f"FROM {table} WHERE scale_id > 100 ORDER BY {order}").fetchall()

    small, general = rows("weighing_logs", "1, 2")
    assert small == general and len(small) == 8
    assert {"val": "21.4 °C"} in [value for r in small for value in r[3:]]
    small, general = rows("scale_current_states", "1")
    assert small == general and [r[1] for r in small] == [0, 0, 0]  # each scale's greatest ts: its lowest seq here
    assert conn.execute("SELECT scale_id % 100, first_seq, last_seq FROM ingestor_claims ORDER BY scale_id"
                        ).fetchall() == [(1, 0, 2), (2, 0, 2), (3, 0, 1)] * 2


def test_a_small_batch_that_does_not_continue_its_heads_goes_the_general_way(ring, dsn, conn, tmp_path, monkeypatch):
    taken = _paths_taken(monkeypatch)
    put(ring, [Event(scale_id=1, seq=i, ts=1000 + i) for i in range(5)])
    w = make_writer(ring, dsn, tmp_path)
    w.run()
    assert taken == {"small": 1, "general": 0}
    # a re-send overlapping the head, with a scale never seen: the function turns it down,
    # having made only scale 2's claims row; the general path counts the duplicates
    put(ring, [Event(scale_id=1, seq=i, ts=1000 + i) for i in range(3, 7)] + [Event(scale_id=2, seq=0, ts=1)])
    w2 = make_writer(ring, dsn, tmp_path)
    w2.counters[...] = w.counters
    w2.run()
    assert taken == {"small": 1, "general": 1}
    # a gap: one scale, two runs, never sent to the function
    put(ring, [Event(scale_id=1, seq=9, ts=1009), Event(scale_id=1, seq=7, ts=1007)])
    w3 = make_writer(ring, dsn, tmp_path)
    w3.counters[...] = w2.counters
    w3.run()
    assert taken == {"small": 1, "general": 2}
    assert (int(w3.counters["persisted"]), int(w3.counters["duplicates"])) == (10, 2)
    assert conn.execute("SELECT array_agg((scale_id, seq)::text ORDER BY scale_id, seq) FROM weighing_logs"
                        ).fetchone()[0] == [f"(1,{q})" for q in (0, 1, 2, 3, 4, 5, 6, 7, 9)] + ["(2,0)"]
    assert conn.execute("SELECT scale_id, first_seq, last_seq FROM ingestor_claims ORDER BY 1").fetchall() == [
        (1, 9, 9), (2, 0, 0)]
    assert conn.execute("SELECT scale_id, first_seq, last_seq FROM ingestor_claim_runs").fetchall() == [(1, 0, 7)]
    assert checkpoint(conn) == ring.lanes[0].tail == 12


@pytest.mark.parametrize("size", [3, 600], ids=["one statement", "COPY"])
def test_no_record_number_past_the_reservation_is_committed_and_the_writer_waits_for_it(
        ring, dsn, conn, tmp_path, size):
    """ingestor/commits.py reserves record numbers on disk before the writers use them (docs/alibi.md#after-a-restore):
    a batch past them is rolled back, and written once the supervisor reserves more."""
    import threading

    from ingestor.chains import Reservation
    from ingestor.stats import FRONT_DTYPE

    front = np.zeros((), FRONT_DTYPE)
    front["records_reserved"], front["record_floor"] = 2, 500  # a skip to 500 was recorded: new chains at 501
    counters = np.zeros((), WRITER_DTYPE)
    w = Writer(writer_args(ring, dsn, tmp_path / "dl"), ring.lanes[0], counters, lambda: True,
               reservation=Reservation(front, counters))
    put(ring, [Event(scale_id=1, seq=i, ts=1000 + i, data_1=str(i)) for i in range(size)])
    writing = threading.Thread(target=w.run)
    writing.start()
    deadline = time.monotonic() + 10
    while counters["record_no_max"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # a few rounds of waiting
    assert counters["record_no_max"] == 500 + size  # what it wants, told before any commit
    assert conn.execute("SELECT count(*) FROM weighing_logs").fetchone()[0] == 0 and writing.is_alive()
    front["records_reserved"] = 500 + size
    writing.join(10)
    assert not writing.is_alive()
    assert conn.execute("SELECT min(record_no), max(record_no) FROM weighing_logs").fetchone() == (501, 500 + size)
