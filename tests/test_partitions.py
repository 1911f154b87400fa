"""ingestor/partitions.py: which days to archive, retention that drops only verified archives, the list.

Against a real PostgreSQL and real archive files (tests/archive_fixtures.py makes the past days).
"""

from __future__ import annotations

import json

from ingestor import archive, partitions

from .archive_fixtures import fill_day, partition_name, past_day
from .test_archive import cli, live_partitions


def test_retention_with_a_target_drops_only_verified_archives_and_refuses_the_rest(dsn, conn, tmp_path, caplog):
    archived, unarchived, changed, missing = past_day(6), past_day(5), past_day(4), past_day(3)
    for d in (archived, unarchived, changed, missing):
        fill_day(conn, d)
    target = archive.Target(str(tmp_path))
    for d in (archived, changed, missing):
        archive.archive_partition(conn, target, partition_name(d), d)
    fill_day(conn, changed, scales=1, per_scale=1, seq_from=1000)  # a row arrived after its archive
    (tmp_path / f"{partition_name(missing)}.parquet").unlink()  # the archive went away
    retired = partitions.retire(dsn, "public", past_day(2), target)
    assert retired.dropped == [(partition_name(archived), 280)]
    why = dict(retired.refused)
    assert why[partition_name(unarchived)].startswith("no verified archive")
    assert "holds 281 rows, its archive 280" in why[partition_name(changed)]
    assert "is missing" in why[partition_name(missing)]
    assert live_partitions(conn) >= {partition_name(d) for d in (unarchived, changed, missing)}
    assert partition_name(archived) not in live_partitions(conn)
    assert sum("Retention refused to drop" in r.message for r in caplog.records) == 3
    listed = partitions.partitions(dsn, "public", count=True)
    gone = next(p for p in listed if p.partition == partition_name(archived))
    assert gone.table_bytes is None and gone.rows == 280 and gone.location.endswith(".parquet")
    assert next(p for p in listed if p.partition == partition_name(unarchived)).rows == 280


def test_retention_reads_the_archive_back_and_refuses_one_changed_since_at_the_same_size(dsn, conn, tmp_path):
    # finding 8 of issue 26: retention trusted a file's size
    days = [past_day(n) for n in range(12, 3, -1)]
    target = archive.Target(str(tmp_path))
    for d in days:
        fill_day(conn, d)
        archive.archive_partition(conn, target, partition_name(d), d)
    intact = {}
    for n, d in enumerate(days):  # one byte flipped at 10 %, 20 %, … of each file: the size stays
        path = tmp_path / f"{partition_name(d)}.parquet"
        data = bytearray(path.read_bytes())
        at = len(data) * (n + 1) // 10
        data[at] ^= 0x10
        path.write_bytes(bytes(data))
        rows, checksum = conn.execute("SELECT rows, checksum FROM ingestor_archives WHERE partition = %s",
                                      (partition_name(d),)).fetchone()
        try:
            intact[partition_name(d)] = archive.verify(target, path.name) == (rows, int(checksum))
        except Exception:  # noqa: BLE001 - not Parquet any more: pyarrow's or DuckDB's error
            intact[partition_name(d)] = False
    retired = partitions.retire(dsn, "public", past_day(2), target)
    # dropped exactly where the bytes still hold the archived rows (a flip in statistics or padding changes none)
    assert {p for p, _ in retired.dropped} == {p for p, ok in intact.items() if ok}
    assert len(retired.refused) >= 5, retired
    for partition, why in retired.refused:
        assert "changed since it was verified" in why or "cannot read" in why, why
        assert partition in live_partitions(conn)


def test_retention_without_a_target_drops_as_before(dsn, conn):
    fill_day(conn, past_day(4))
    assert partitions.retire(dsn, "public", past_day(2), None).dropped == [(partition_name(past_day(4)), -1)]


def test_partitions_list_shows_rows_bytes_and_where_each_day_is_archived(dsn, conn, tmp_path):
    day = past_day(2)
    fill_day(conn, day)
    assert cli("partitions", "archive", "--before", str(past_day(1)), "--to", str(tmp_path), "--dsn", dsn).returncode == 0
    r = cli("partitions", "list", "--count", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith(partition_name(day)))
    assert "280" in line and str(tmp_path / f"{partition_name(day)}.parquet") in line
    today = next(x for x in r.stdout.splitlines() if x.startswith(partition_name(past_day(0))))
    assert today.split()[1] == "0" and today.rstrip().endswith("-")
    r = cli("partitions", "list", "--json", "--dsn", dsn)
    first = json.loads(r.stdout.splitlines()[0])
    assert first["partition"] == partition_name(day) and first["file_bytes"] > 0


def test_verify_reads_every_archive_back_and_names_the_missing_and_the_changed(dsn, conn, tmp_path):
    days = [past_day(4), past_day(3), past_day(2)]
    for d in days:
        fill_day(conn, d)
    assert cli("partitions", "archive", "--before", str(past_day(1)), "--to", str(tmp_path), "--dsn", dsn).returncode == 0
    r = cli("partitions", "verify", "--dsn", dsn)
    assert r.returncode == 0 and "verified 3 of 3 archive(s)" in r.stdout, r.stdout + r.stderr
    (tmp_path / f"{partition_name(days[0])}.parquet").unlink()
    other = tmp_path / f"{partition_name(days[2])}.parquet"
    other.write_bytes((tmp_path / f"{partition_name(days[1])}.parquet").read_bytes())  # another day's rows
    r = cli("partitions", "verify", "--dsn", dsn)
    assert r.returncode == 1 and "verified 1 of 3 archive(s); 2 FAILED" in r.stdout
    assert f"{partition_name(days[0])}: FAILED, missing" in r.stdout
    assert f"{partition_name(days[2])}: FAILED, CHANGED: 280 rows, checksum" in r.stdout
    assert "does not verify" in r.stderr
