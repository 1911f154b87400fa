"""ingestor/history.py and docs/operations.md#querying-the-archive: one scale's history across archive and PostgreSQL.

Days 5, 4 and 3 days ago are archived; 5 and 4 are then dropped by retention,
so the history comes from Parquet (5, 4), from PostgreSQL (3, 2, today),
with day 3 in both (counted once).
"""

from __future__ import annotations

import csv as csv_module
import datetime as dt
import io
import json
import re
from pathlib import Path

import pytest

from ingestor import archive, partitions

from .archive_fixtures import fill_day, partition_name, past_day
from .test_archive import cli, live_partitions

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
SCALE = 3


@pytest.fixture
def history_spread(dsn, conn, tmp_path) -> tuple[Path, list[tuple]]:
    """(archive directory, the expected rows of scale SCALE as (id, seq, measured_at, data_1), in history order)."""
    for k in (5, 4, 3, 2):
        fill_day(conn, past_day(k), seq_from=100 * k)
    conn.execute("INSERT INTO weighing_logs (scale_id, seq, measured_at, created_at, data_1) "
                 f"VALUES ({SCALE}, 1, now(), now(), '{{\"val\": \"today\"}}')")
    expected = conn.execute("SELECT id, seq, measured_at, data_1->>'val' FROM weighing_logs WHERE scale_id = %s "
                            "ORDER BY measured_at, seq", (SCALE,)).fetchall()
    target = archive.Target(str(tmp_path / "archive"))
    partitions.archive_before(dsn, "public", target, past_day(2))
    partitions.retire(dsn, "public", past_day(3), target)
    assert partition_name(past_day(4)) not in live_partitions(conn)
    assert partition_name(past_day(3)) in live_partitions(conn)
    return tmp_path / "archive", expected


def test_history_command_reads_dropped_days_from_their_archives_and_the_rest_from_postgresql(dsn, history_spread):
    _, expected = history_spread
    r = cli("history", "--scale", str(SCALE), "--since", str(past_day(10)), "--json", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["id"], x["seq"], x["data_1"]) for x in got] == [(i, s, d) for i, s, _, d in expected]
    assert [dt.datetime.fromisoformat(x["measured_at"]) for x in got] == [m for _, _, m, _ in expected]
    csv = cli("history", "--scale", str(SCALE), "--since", str(past_day(4)), "--until", str(past_day(3)), "--dsn", dsn)
    assert csv.returncode == 0 and csv.stdout.splitlines()[0].startswith('"id","scale_id","seq"')
    assert len(list(csv_module.reader(io.StringIO(csv.stdout)))) == 1 + 40  # only day 4, from its archive


def test_the_documented_duckdb_query_gives_the_same_history(dsn, history_spread, capsys):
    directory, expected = history_spread
    code = re.search(r"<!-- tested by tests/test_history\.py -->\n```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    code = re.sub(r'^DSN, ARCHIVE = .*$', f"DSN, ARCHIVE = {dsn!r}, {str(directory)!r}", code, flags=re.M)
    code = re.sub(r"^SCALE = .*$", f"SCALE = {SCALE}", code, flags=re.M)
    code = re.sub(r"^SINCE, UNTIL = .*$", "SINCE, UNTIL = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc), "
                  "dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)", code, flags=re.M)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    rows = namespace["history"].fetchall()
    assert [(r[0], r[2], r[3], r[5]) for r in rows] == expected


def test_history_from_the_year_1_answers_and_a_lost_archive_is_one_line_and_exit_2(dsn, history_spread):
    # finding 7 of issue 26: OverflowError and FileNotFoundError tracebacks
    directory, expected = history_spread
    r = cli("history", "--scale", str(SCALE), "--since", "0001-01-01", "--until", "9999-12-31", "--json", "--dsn", dsn)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(expected), r.stderr
    lost = directory / f"{partition_name(past_day(5))}.parquet"
    lost.unlink()
    r = cli("history", "--scale", str(SCALE), "--since", str(past_day(10)), "--dsn", dsn)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert str(lost) in r.stderr and "incomplete" in r.stderr and "Traceback" not in r.stderr
