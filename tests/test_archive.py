"""ingestor/archive.py: day partitions to Parquet, verified, on disk and on S3; retention that keeps what is not.

Against a real PostgreSQL, real files, a real S3-compatible server (moto in
server mode) and, for a full disk, the kernel's own file-size limit.
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import signal
import subprocess
import sys

import psycopg
import pyarrow.parquet as pq
import pytest

from ingestor import archive, failpoints, history, partitions
from ingestor.errors import ArchiveError, ConfigError

from .archive_fixtures import fill_day, make_bucket, partition_name, past_day, rows_of_day, s3_server  # noqa: F401


def live_partitions(conn) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'weighing_logs'::regclass")}


def archived_rows(path) -> list[tuple]:
    table = pq.read_table(path)
    return sorted(tuple(r.values()) for r in table.to_pylist())


def recorded(conn) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in conn.execute("SELECT partition, location, rows, file_bytes FROM ingestor_archives")}


def cli(*args: str, env: dict | None = None, limit_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit():  # a full disk as the kernel reports it to this process: EFBIG past the limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run([sys.executable, "-m", "ingestor.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, preexec_fn=limit if limit_file_bytes else None)


def test_archive_round_trip_gives_back_every_row_and_value_and_drops_nothing(dsn, conn, tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "ROW_GROUP_ROWS", 100)  # several row groups from a small day
    days = [past_day(3), past_day(2)]
    counts = [fill_day(conn, d) for d in days]
    done, errors = partitions.archive_before(dsn, "public", archive.Target(str(tmp_path)), past_day(1))
    assert errors == [] and [a.rows for a in done] == counts
    for day in days:
        path = tmp_path / f"{partition_name(day)}.parquet"
        assert archived_rows(path) == [tuple(r) for r in rows_of_day(conn, day)]  # every row, every value
        groups = pq.ParquetFile(path)
        scales_per_group = [set(groups.read_row_group(i, columns=["scale_id"]).column(0).to_pylist())
                            for i in range(groups.num_row_groups)]
        assert groups.num_row_groups > 1 and sum(len(s) for s in scales_per_group) == 7  # a scale in one group
        assert groups.schema_arrow.field("measured_at").type.tz == "UTC"
        assert groups.metadata.row_group(0).column(0).compression == "ZSTD"
    assert set(recorded(conn)) == {partition_name(d) for d in days}
    assert {partition_name(d) for d in days} <= live_partitions(conn)  # archiving drops nothing
    assert not list(tmp_path.glob(".*.tmp"))
    again, _ = partitions.archive_before(dsn, "public", archive.Target(str(tmp_path)), past_day(1))
    assert again == []  # archived once


# every shape but {"val": text}: finding 2 of issue 26 ('{}' on a NULL field was archived as NULL) and 3 (a scalar
# was an error); times the columns cannot hold
UNARCHIVABLE = {"another key": "data_3 = '{\"val\": \"1\", \"unit\": \"kg\"}'", "{} on NULL": "data_3 = '{}'",
                "{} on a value": "data_1 = '{}'", "val null": "data_2 = '{\"val\": null}'",
                "val a number": "data_2 = '{\"val\": 5}'", "an array": "data_4 = '[]'", "JSON null": "data_1 = 'null'",
                "a number": "data_5 = '12.5'", "a string": "data_1 = '\"12.5\"'",
                "measured_at infinity": "measured_at = 'infinity'",
                "measured_at past year 290000": "measured_at = '294000-01-01 00:00+00'"}


@pytest.mark.parametrize("what", UNARCHIVABLE)
def test_a_row_the_columns_cannot_hold_refuses_the_archive_naming_the_row(dsn, conn, tmp_path, what):
    day = past_day(2)
    fill_day(conn, day)
    bad = conn.execute(f"UPDATE weighing_logs SET {UNARCHIVABLE[what]} WHERE id = "
                       "(SELECT min(id) FROM weighing_logs) RETURNING id").fetchone()[0]
    done, errors = partitions.archive_before(dsn, "public", archive.Target(str(tmp_path)), past_day(1))
    assert done == [] and f"row id {bad} has a data field" in errors[0]
    assert list(tmp_path.iterdir()) == [] and recorded(conn) == {}


def test_disk_full_mid_file_leaves_nothing_half_written_and_the_partition_kept(dsn, conn, tmp_path):
    day = past_day(2)
    rows = fill_day(conn, day, scales=40, per_scale=100)
    out = tmp_path / "archive"
    r = cli("partitions", "archive", "--before", str(past_day(1)), "--to", str(out), "--dsn", dsn,
            limit_file_bytes=16384)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed; the partition stays in PostgreSQL" in r.stderr and "File too large" in r.stderr
    assert list(out.iterdir()) == []  # not even the temporary file
    assert recorded(conn) == {} and partition_name(day) in live_partitions(conn)
    assert len(rows_of_day(conn, day)) == rows
    r = cli("partitions", "archive", "--before", str(past_day(1)), "--to", str(out), "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    assert archived_rows(out / f"{partition_name(day)}.parquet") == [tuple(x) for x in rows_of_day(conn, day)]


ARCHIVE_CASES = [(name, action) for name, (actions, _) in failpoints.FAILPOINTS.items() if name.startswith("archive.")
                 for action in actions if action != "sleep"]


@pytest.mark.parametrize("name,action", ARCHIVE_CASES, ids=[f"{n}={a}" for n, a in ARCHIVE_CASES])
def test_failure_at_each_archive_step_keeps_the_partition_and_the_next_run_archives_it(name, action, dsn, conn,
                                                                                       tmp_path):
    day, next_day = past_day(3), past_day(2)  # the failure hits the first; the same run goes on with the second
    fill_day(conn, day)
    fill_day(conn, next_day)
    out, state = tmp_path / "archive", tmp_path / "failpoints"
    state.mkdir()
    argv = ("partitions", "archive", "--before", str(past_day(1)), "--to", str(out), "--dsn", dsn)
    armed = {failpoints.ENV: f"{name}=1*{action}", failpoints.STATE_ENV: str(state)}
    r = cli(*argv, env=armed)
    assert failpoints.fired(name, state) == 1
    assert r.returncode == {"kill": -signal.SIGKILL, "disconnect": 2}.get(action, 1), r.stderr
    assert action == "kill" or f"Archive of {partition_name(day)} to {out} failed; the partition stays" in r.stderr
    final = out / f"{partition_name(day)}.parquet"
    # the one step after which the file may be in place: recording it; then it is not recorded
    assert final.exists() == (name == "archive.record")
    went_on = action not in ("kill", "disconnect")
    assert set(recorded(conn)) == ({partition_name(next_day)} if went_on else set())
    assert {partition_name(day), partition_name(next_day)} <= live_partitions(conn)
    r = cli(*argv)
    assert r.returncode == 0, r.stderr
    for d in (day, next_day):
        assert archived_rows(out / f"{partition_name(d)}.parquet") == [tuple(x) for x in rows_of_day(conn, d)]
    assert set(recorded(conn)) == {partition_name(day), partition_name(next_day)} and not list(out.glob(".*.tmp"))


def test_a_file_of_another_plant_under_the_final_name_is_never_overwritten(dsn, conn, tmp_path):
    day = past_day(2)
    fill_day(conn, day)
    partitions.archive_before(dsn, "public", archive.Target(str(tmp_path / "a")), past_day(1))
    conn.execute("DELETE FROM ingestor_archives")
    conn.execute("UPDATE weighing_logs SET data_1 = '{\"val\": \"changed\"}' WHERE id = (SELECT min(id) FROM weighing_logs)")
    other = tmp_path / "a" / f"{partition_name(day)}.parquet"
    before = other.read_bytes()
    done, errors = partitions.archive_before(dsn, "public", archive.Target(str(tmp_path / "a")), past_day(1))
    assert done == [] and "already exists and is not an archive of" in errors[0]
    assert other.read_bytes() == before


def test_s3_target_archives_reads_back_and_retires_against_a_local_s3_server(dsn, conn, s3_server):  # noqa: F811
    make_bucket(s3_server, "plant")
    day = past_day(2)
    fill_day(conn, day)
    r = cli("partitions", "archive", "--before", str(past_day(1)), "--to", "s3://plant/site-a/", "--endpoint",
            s3_server, "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    key = f"s3://plant/site-a/{partition_name(day)}.parquet"
    assert recorded(conn)[partition_name(day)][:2] == (key, 280)
    target = archive.Target("s3://plant/site-a", s3_server)
    with target.fs.open_input_file(target.path(f"{partition_name(day)}.parquet")) as f:
        assert sorted(tuple(r.values()) for r in pq.read_table(f).to_pylist()) == [
            tuple(x) for x in rows_of_day(conn, day)]
    expected = conn.execute("SELECT id FROM weighing_logs WHERE scale_id = 3 ORDER BY measured_at, seq").fetchall()
    assert partitions.retire(dsn, "public", past_day(1), target).dropped == [(partition_name(day), 280)]
    since = dt.datetime.combine(past_day(3), dt.time(), dt.UTC)
    rows = history.history(dsn, "public", 3, since, since + dt.timedelta(days=3), endpoint=s3_server)
    assert rows.column("id").to_pylist() == [i for (i,) in expected] and len(expected) == 40  # read back from S3


def test_failed_upload_to_s3_leaves_nothing_and_keeps_the_partition(dsn, conn, s3_server):  # noqa: F811
    day = past_day(2)
    fill_day(conn, day)
    r = cli("partitions", "archive", "--before", str(past_day(1)), "--to", "s3://no-such-bucket/x", "--endpoint",
            s3_server, "--dsn", dsn)
    assert r.returncode == 1 and "failed; the partition stays in PostgreSQL" in r.stderr
    assert recorded(conn) == {} and partition_name(day) in live_partitions(conn)
    target = archive.Target("s3://no-such-bucket/x", s3_server)
    assert target.size(archive.temporary_name(partition_name(day))) is None
    assert partitions.retire(dsn, "public", past_day(1), target).refused[0][0] == partition_name(day)


@pytest.mark.parametrize("uri,endpoint,message", [
    ("s3://key:secret@bucket/x", "", "credentials and options do not go in the URI"),
    ("s3://bucket/x?access_key=k", "", "credentials and options do not go in the URI"),
    ("s3:///x", "", "no bucket"),
    ("gs://bucket/x", "", "expected a directory or s3://BUCKET/PREFIX"),
    ("s3://bucket/x", "ftp://store", "expected http(s)://HOST[:PORT]"),
])
def test_bad_targets_are_refused_naming_the_value(uri, endpoint, message):
    with pytest.raises(ConfigError, match="archive") as e:
        archive.Target(uri, endpoint)
    assert message in str(e.value)


def test_checksums_of_postgresql_and_duckdb_agree_on_each_kind_of_value(dsn, conn, tmp_path):
    day = past_day(2)
    fill_day(conn, day, scales=3, per_scale=30)
    lo = dt.datetime.combine(day, dt.time(), dt.UTC)
    rows, checksum, _ = conn.execute(archive.CHECKSUM_PG, {"lo": lo, "hi": lo + dt.timedelta(days=1)}).fetchone()
    a = archive.archive_partition(conn, archive.Target(str(tmp_path)), partition_name(day), day)
    assert (a.rows, a.checksum) == (rows, checksum)
    conn.execute("UPDATE weighing_logs SET data_2 = '{\"val\": \"12.51\"}' WHERE id = (SELECT max(id) FROM weighing_logs)")
    assert conn.execute(archive.CHECKSUM_PG, {"lo": lo, "hi": lo + dt.timedelta(days=1)}).fetchone()[1] != checksum
    with pytest.raises(ArchiveError, match="already exists"):
        conn.execute("DELETE FROM ingestor_archives")
        archive.archive_partition(conn, archive.Target(str(tmp_path)), partition_name(day), day)
    assert isinstance(psycopg, object)


def test_an_archive_of_format_1_without_the_chain_columns_still_verifies(dsn, conn, tmp_path):
    # files written before migration 010 lack record_no and link; their rows had none, so the checksum is the same
    day = past_day(2)
    fill_day(conn, day)
    conn.execute("UPDATE weighing_logs SET record_no = NULL, link = NULL")
    done, _ = partitions.archive_before(dsn, "public", archive.Target(str(tmp_path)), past_day(1))
    path = tmp_path / f"{partition_name(day)}.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(list(archive.CHAIN)), path)
    assert archive.verify(archive.Target(str(tmp_path)), path.name) == (done[0].rows, done[0].checksum)
    table = pq.read_table(path).drop_columns(["data_5"])
    pq.write_table(table, path)
    with pytest.raises(ArchiveError, match="columns differ"):
        archive.verify(archive.Target(str(tmp_path)), path.name)
