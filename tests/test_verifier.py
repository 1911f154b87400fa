"""The alibi verifier against a real PostgreSQL: chains written by real writers, each kind of tampering named.

Every chain here is written by :class:`ingestor.writer.Writer` (both of its
paths, duplicates, a rejected row), sealed by :class:`ingestor.seals.Sealer`,
then tampered with in SQL as someone with UPDATE rights would, and checked
by :func:`ingestor.verifier.verify` and by ``ingestor alibi verify|show``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from ingestor import seals, verifier, writer
from ingestor.protocol import RECORD_DTYPE, Event, RecordBuilder
from ingestor.ring import Ring
from ingestor.stats import WRITER_DTYPE

from .fix_ring import writer_args

SCALES, PER_SCALE = 3, 70
STORED = SCALES * PER_SCALE - 1


@pytest.fixture
def ring(ring_factory):
    return ring_factory(lanes=2, lane_capacity=4096)


@pytest.fixture
def keys(tmp_path):
    public, secret = seals.generate_keys(tmp_path / "keys")
    return public, secret


def events(first: int, last: int, scales=range(1, SCALES + 1)) -> list[Event]:
    return [Event(scale_id=s, seq=i, ts=1_764_000_000_000 + 1000 * i + s, data_1=f"{10 + i}.{s}", data_2="kg",
                  data_5=None if i % 3 else "lot \"A\"\n") for i in range(first, last) for s in scales]


def writer_of(ring, dsn, tmp_path, lane: int, alibi: bool = True) -> writer.Writer:
    w = writer.Writer(writer_args(ring, dsn, tmp_path / "dl", lane, alibi=alibi), ring.lanes[lane],
                      np.zeros((), WRITER_DTYPE), lambda: True)
    w.pool.open()
    return w


@contextmanager
def two_writers(dsn: str, home: Path) -> Iterator[tuple[writer.Writer, writer.Writer]]:
    """The writers of lanes 0 and 1 of a new ring on ``dsn``; their pools closed and the ring unlinked on leaving."""
    ring = Ring.create(lanes=2, lane_capacity=4096, dtype=RECORD_DTYPE)
    try:
        w0, w1 = writer_of(ring, dsn, home, 0), writer_of(ring, dsn, home, 1)
        try:
            yield w0, w1
        finally:
            w0.pool.close()
            w1.pool.close()
    finally:
        ring.unlink()
        ring.close()


def write(w: writer.Writer, batch: list[Event]) -> None:
    """Write ``batch`` as one batch of ``w``'s lane."""
    b = RecordBuilder()
    for e in batch:
        b.add(e, time.time_ns() // 1000)
    w.lane.put_all(b.build(time.time_ns()))
    w.write_batch(w.lane.peek(w.lane.used()))


@pytest.fixture
def chained(ring, dsn, conn, tmp_path, keys):
    """70 records of each of 3 scales (69 of scale 2: its seq 13 is refused by a CHECK), written by two writers
    through both paths, with re-sent duplicates, then sealed; returns the public key."""
    conn.execute("ALTER TABLE weighing_logs ADD CONSTRAINT no_2_13 CHECK (scale_id <> 2 OR seq <> 13)")
    w0, w1 = writer_of(ring, dsn, tmp_path, 0), writer_of(ring, dsn, tmp_path, 1)
    try:
        write(w0, events(0, 5))  # new chains, guessed: one statement
        write(w0, events(5, 10))  # heads this writer committed: one statement
        write(w1, events(8, 12))  # re-sent keys: the general path, duplicates left out of the chains
        write(w1, events(9, 11))  # nothing but duplicates: nothing linked
        write(w1, events(12, 60))  # > SMALL_BATCH: COPY, bisected around the refused row
        write(w0, events(60, 65))  # w0's heads moved on under w1: the function refuses, the general path writes
        write(w0, events(65, 70))  # and w0 knows them again: one statement
    finally:
        w0.pool.close()
        w1.pool.close()
    conn.execute("ALTER TABLE weighing_logs DROP CONSTRAINT no_2_13")
    seal = seals.Sealer(dsn, "public", "test", keys[1], tmp_path / "seals.jsonl").seal()
    assert seal is not None and len(seal.heads) == SCALES
    return seals.load_public(keys[0])


def kinds(report) -> list[tuple]:
    return [(f.scale_id, f.kind, f.records) for f in report.findings]


def test_chains_written_by_two_writers_through_both_paths_verify(chained, dsn, conn, tmp_path):
    assert len(events(5, 10)) <= writer.SMALL_BATCH < len(events(12, 60))
    report = verifier.verify(dsn, "public", public_keys=[chained], seal_file=tmp_path / "seals.jsonl")
    stored = conn.execute("SELECT count(*), count(record_no), count(DISTINCT (scale_id, record_no)) "
                          "FROM weighing_logs").fetchone()
    assert stored == (STORED,) * 3  # every row chained once; the refused one is not stored
    assert report == verifier.Report(STORED, SCALES, 1, True, [])
    # each scale numbered 1..n without a gap, n in its claims row's head
    assert conn.execute("SELECT scale_id, record_no FROM ingestor_claims ORDER BY 1").fetchall() == [
        (1, 70), (2, 69), (3, 70)]
    assert conn.execute("SELECT scale_id, min(record_no), max(record_no) FROM weighing_logs GROUP BY 1 ORDER BY 1"
                        ).fetchall() == [(1, 1, 70), (2, 1, 69), (3, 1, 70)]


TAMPERING = {
    "update of one weight": ("UPDATE weighing_logs SET data_1 = '{\"val\": \"99.9\"}' "
                             "WHERE scale_id = 1 AND record_no = 7", [(1, "changed", (7,))]),
    "update of a field's shape": ("UPDATE weighing_logs SET data_2 = '{\"val\": \"kg\", \"by\": \"me\"}' "
                                  "WHERE scale_id = 3 AND record_no = 2", [(3, "changed", (2,))]),
    "delete of one row": ("DELETE FROM weighing_logs WHERE scale_id = 2 AND record_no = 20",
                          [(2, "deleted", (20,))]),
    "an inserted row": ("INSERT INTO weighing_logs (scale_id, seq, measured_at, created_at, data_1) "
                        "SELECT scale_id, 999, measured_at, created_at, '{\"val\": \"1.0\"}' FROM weighing_logs "
                        "WHERE scale_id = 1 AND record_no = 3", "inserted"),
    "a reordered pair": ("UPDATE weighing_logs w SET seq = o.seq, measured_at = o.measured_at, data_1 = o.data_1, "
                         "data_2 = o.data_2, data_3 = o.data_3, data_4 = o.data_4, data_5 = o.data_5 "
                         "FROM weighing_logs o WHERE w.scale_id = 3 AND o.scale_id = 3 AND "
                         "((w.record_no = 3 AND o.record_no = 4) OR (w.record_no = 4 AND o.record_no = 3))",
                         [(3, "reordered", (3, 4))]),
    "a truncated chain": ("DELETE FROM weighing_logs WHERE scale_id = 1 AND record_no > 67",
                          [(1, "truncated", (68, 69, 70))]),  # named once: not also as the sealed head
}


@pytest.mark.parametrize("what", TAMPERING)
def test_each_tampering_is_detected_and_named(what, chained, dsn, conn):
    statement, expected = TAMPERING[what]
    conn.execute(statement)
    report = verifier.verify(dsn, "public", public_keys=[chained])
    if expected == "inserted":
        row_id = conn.execute("SELECT id FROM weighing_logs WHERE seq = 999").fetchone()[0]
        expected = [(1, "inserted", (row_id,))]
    assert kinds(report) == expected


def test_a_consistently_rewritten_chain_passes_the_links_but_not_the_seal(chained, dsn, conn):
    from ingestor import alibi

    conn.execute("UPDATE weighing_logs SET data_1 = '{\"val\": \"99.9\"}' WHERE scale_id = 1 AND record_no = 30")
    rows = conn.execute(f"SELECT {verifier._COLUMNS} FROM weighing_logs WHERE scale_id = 1 ORDER BY record_no").fetchall()
    heads = {}
    _, links = alibi.chain(alibi.canonical_from_rows([(r[0], r[4], r[5], r[6], *r[7:12]) for r in rows]), heads)
    for r, link in zip(rows, links):  # every link recomputed, and the head: what a forger with the formula does
        conn.execute("UPDATE weighing_logs SET link = %s WHERE id = %s", (link, r[1]))
    conn.execute("UPDATE ingestor_claims SET link = %s WHERE scale_id = 1", (heads[1].link,))
    assert kinds(verifier.verify(dsn, "public")) == []  # without the seals it passes
    assert kinds(verifier.verify(dsn, "public", public_keys=[chained])) == [(1, "sealed", (70,))]


def test_a_forged_or_deleted_seal_is_named(chained, dsn, conn, tmp_path):
    other, _ = seals.generate_keys(tmp_path / "other")
    text = conn.execute("SELECT seal FROM ingestor_seals").fetchone()[0]
    conn.execute("UPDATE ingestor_seals SET seal = replace(seal, '\"record_no\"', '\"record_no\"')")  # unchanged
    conn.execute("INSERT INTO ingestor_seals (instance, sealed_at, key_id, seal) SELECT instance, sealed_at, key_id, "
                 "replace(seal, '[1,70,', '[1,69,') FROM ingestor_seals")  # an earlier head, same signature
    report = verifier.verify(dsn, "public", public_keys=[chained], seal_file=tmp_path / "seals.jsonl")
    assert [(f.kind, "signature does not hold" in f.detail) for f in report.findings] == [("forged", True)]
    assert report.seals == 1
    conn.execute("DELETE FROM ingestor_seals")  # the file still has it
    report = verifier.verify(dsn, "public", public_keys=[chained], seal_file=tmp_path / "seals.jsonl")
    assert [f.kind for f in report.findings] == ["unrecorded"] and report.seals == 1
    assert kinds(verifier.verify(dsn, "public", public_keys=[seals.load_public(other)])) == []  # no seals left
    conn.execute("INSERT INTO ingestor_seals (instance, sealed_at, key_id, seal) VALUES ('x', now(), 'k', %s)", (text,))
    report = verifier.verify(dsn, "public", public_keys=[seals.load_public(other)])
    assert [(f.kind, "signed by no key given" in f.detail) for f in report.findings] == [("forged", True)]


def test_a_time_range_and_one_scale_verify_what_they_hold(chained, dsn, conn):
    middle = conn.execute("SELECT min(created_at) FROM weighing_logs WHERE record_no = 12").fetchone()[0]
    report = verifier.verify(dsn, "public", since=middle, public_keys=[chained])
    assert report.findings == [] and 0 < report.records < STORED
    report = verifier.verify(dsn, "public", scale=2, public_keys=[chained])
    assert report.findings == [] and (report.records, report.scales) == (69, 1)
    conn.execute("DELETE FROM weighing_logs WHERE scale_id = 2 AND record_no = 1")
    assert kinds(verifier.verify(dsn, "public", scale=2)) == [(2, "deleted", (1,))]


def two_days(ring, dsn, conn, tmp_path, monkeypatch) -> str:
    """Records 1..2 of each scale written 30 days ago (its day partition made), 3..4 today; returns the old day's
    partition."""
    old = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=30)
    name = f"weighing_logs_p{old:%Y%m%d}"
    conn.execute(f"CREATE TABLE {name} PARTITION OF weighing_logs FOR VALUES FROM "
                 f"('{old}'::timestamp AT TIME ZONE 'UTC') TO (('{old}'::date + 1)::timestamp AT TIME ZONE 'UTC')")

    class Past:  # the writer's clock, 30 days back: its rows' created_at falls in the old day
        def __getattr__(self, attr):
            return getattr(time, attr)

        def time_ns(self):
            return time.time_ns() - 30 * 86_400 * 10**9

    w = writer_of(ring, dsn, tmp_path, 0)
    with monkeypatch.context() as m:
        m.setattr(writer, "time", Past())
        write(w, events(0, 2))
    write(w, events(2, 4))
    w.pool.close()
    assert conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == SCALES * 2
    return name


def test_retention_keeps_where_each_chain_continues(ring, dsn, conn, tmp_path, monkeypatch):
    # the old day dropped: records 3.. are checked against the dropped records' last links
    two_days(ring, dsn, conn, tmp_path, monkeypatch)
    assert kinds(verifier.verify(dsn, "public")) == []
    assert conn.execute("SELECT ingestor_drop_partitions_before(current_date - 1)").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM weighing_logs").fetchone()[0] == SCALES * 2
    assert conn.execute("SELECT scale_id, record_no FROM ingestor_alibi_starts ORDER BY 1").fetchall() == [
        (s, 2) for s in range(1, SCALES + 1)]
    report = verifier.verify(dsn, "public")
    assert report.findings == [] and report.records == SCALES * 2
    conn.execute("UPDATE weighing_logs SET data_1 = '{\"val\": \"0\"}' WHERE scale_id = 2 AND record_no = 3")
    assert kinds(verifier.verify(dsn, "public")) == [(2, "changed", (3,))]  # checked against the dropped link


def test_archived_days_are_verified_from_their_parquet_files(ring, dsn, conn, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ingestor import archive, partitions

    name = two_days(ring, dsn, conn, tmp_path, monkeypatch)
    target = archive.Target(str(tmp_path / "archive"))
    done, errors = partitions.archive_before(dsn, "public", target, dt.date.today() - dt.timedelta(days=1))
    assert errors == [] and [a.partition for a in done] == [name]
    conn.execute("SELECT ingestor_drop_archived_partition(%s)", (name,))
    report = verifier.verify(dsn, "public", archive=True)
    assert report.findings == [] and report.records == SCALES * 4  # every chain from record 1
    path = tmp_path / "archive" / f"{name}.parquet"
    table = pq.read_table(path)
    weights = pc.if_else(pc.and_(pc.equal(table["scale_id"], 3), pc.equal(table["record_no"], 2)),
                         pa.scalar("99.9"), table["data_1"])
    pq.write_table(table.set_column(table.schema.get_field_index("data_1"), "data_1", weights), path)
    assert kinds(verifier.verify(dsn, "public", archive=True)) == [(3, "changed", (2,))]
    assert kinds(verifier.verify(dsn, "public")) == []  # without the archive: from where retention left the chain


def test_cli_verify_and_show_say_it_and_exit_with_codes_a_script_can_use(chained, dsn, conn, keys, tmp_path):
    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "ingestor.cli", "alibi", *args, "--dsn", dsn],
                              capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    code, out = cli("verify", "--public-key", str(keys[0]), "--seal-file", str(tmp_path / "seals.jsonl"))
    assert (code, out.strip()) == (0, f"verified: {STORED} records, 1 seals")
    code, out = cli("show", "2/14")
    assert code == 0 and "record_no    14" in out and "24.2" in out and "intact" in out and "no seal yet" not in out
    conn.execute("UPDATE weighing_logs SET data_1 = '{\"val\": \"99.9\"}' WHERE scale_id = 2 AND record_no = 14")
    code, out = cli("verify")
    assert code == 1 and "CHANGED: scale 2: record 14" in out and "seals not checked" in out
    code, out = cli("show", "2/14")
    assert code == 1 and "CHANGED" in out and "99.9" in out
    assert cli("show", "2/999")[0] == 1 and cli("show", "two")[0] == 2


def test_the_chain_off_stores_nulls_and_the_verifier_says_the_rows_are_not_in_a_chain(ring, dsn, conn, tmp_path):
    w = writer_of(ring, dsn, tmp_path, 0, alibi=False)
    write(w, events(0, 3))  # one statement
    write(w, events(3, 60))  # COPY
    w.pool.close()
    assert conn.execute("SELECT count(*), count(record_no), count(link) FROM weighing_logs").fetchone() == (180, 0, 0)
    assert conn.execute("SELECT count(record_no) FROM ingestor_claims").fetchone() == (0,)
    report = verifier.verify(dsn, "public")
    assert [(f.scale_id, f.kind, len(f.records)) for f in report.findings] == [
        (s, "inserted", 60) for s in range(1, SCALES + 1)]
