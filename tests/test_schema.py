"""Schema upkeep against a real PostgreSQL: partitions ahead, retention, rebuild of the latest states."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import msgspec
import pytest

from ingestor import schema


def partitions(conn) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'weighing_logs'::regclass AND c.relname <> 'weighing_logs_default' ORDER BY 1")]


def test_partitions_are_created_the_given_days_ahead(conn):
    schema.ensure_partitions(conn, 20)
    today = dt.datetime.now(dt.UTC).date()
    names = partitions(conn)
    assert f"weighing_logs_p{today + dt.timedelta(days=20):%Y%m%d}" in names
    assert f"weighing_logs_p{today + dt.timedelta(days=21):%Y%m%d}" not in names


def test_retention_drops_whole_old_days_with_their_rows_and_their_dedup_claims_and_keeps_the_rest(conn):
    conn.execute("CREATE TABLE weighing_logs_p20200101 PARTITION OF weighing_logs "
                 "FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-01-02 00:00+00')")
    old, now = "'2020-01-01 10:00+00'", "now()"
    rows = [(1, q, old) for q in range(0, 10)] + [(1, q, now) for q in range(10, 15)] + [(2, 1, old)] + \
        [(3, 1, "'1999-01-01 00:00+00'")] + [(4, q, old) for q in (5, 6, 7, 11)] + [(4, 10, now), (4, 12, now)]
    conn.execute("INSERT INTO weighing_logs (scale_id, seq, measured_at, created_at) VALUES " +
                 ", ".join(f"({s}, {q}, {t}, {t})" for s, q, t in rows))  # scale 3's row: default partition
    conn.execute("INSERT INTO ingestor_claims VALUES (1, 0, 14), (2, 1, 1), (3, 1, 1), (4, 10, 12)")
    conn.execute("INSERT INTO ingestor_claim_runs VALUES (4, 0, 7)")  # scale 4: 0..4 stored earlier, since dropped
    before = partitions(conn)
    drop_before = "SELECT ingestor_drop_partitions_before(%s)"  # what partitions.retire runs without an archive
    assert conn.execute(drop_before, (dt.date(2020, 1, 1),)).fetchone()[0] == 0  # the cutoff day itself is kept
    assert conn.execute(drop_before, (dt.datetime.now(dt.UTC).date(),)).fetchone()[0] == 1
    assert partitions(conn) == [p for p in before if p != "weighing_logs_p20200101"]
    assert conn.execute("SELECT array_agg((scale_id, seq) ORDER BY scale_id, seq)::text FROM weighing_logs").fetchone()[0] == \
        '{"(1,10)","(1,11)","(1,12)","(1,13)","(1,14)","(3,1)","(4,10)","(4,12)"}'
    # the dropped day's seqs are no longer claimed: dedup reaches as far back as the history
    assert conn.execute("SELECT scale_id, first_seq, last_seq FROM ingestor_claims ORDER BY 1").fetchall() == \
        [(1, 10, 14), (2, None, None), (3, 1, 1), (4, 12, 12)]
    assert conn.execute("SELECT * FROM ingestor_claim_runs ORDER BY 1, 2").fetchall() == [(4, 0, 4), (4, 10, 10)]


@pytest.mark.slow
def test_rebuild_state_recomputes_latest_states_from_the_history(service_factory, dsn, conn):
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    events = [{"scale_id": s, "seq": n, "ts": 1_700_000_000_000 + n, "data_1": f"{s}-{n}"} for s in (1, 2, 3) for n in range(5)]
    svc.send(msgspec.msgpack.encode(events))
    svc.wait_for(lambda s: s["persisted"] == 15)
    assert svc.terminate() == 0
    expected = conn.execute("SELECT scale_id, seq, data_1 FROM scale_current_states ORDER BY 1").fetchall()
    conn.execute("UPDATE scale_current_states SET seq = 999, data_1 = NULL WHERE scale_id = 2")  # damage
    conn.execute("DELETE FROM scale_current_states WHERE scale_id = 3")
    r = subprocess.run([sys.executable, "-m", "ingestor.cli", "rebuild-state", "--dsn", dsn],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "rebuilt from weighing_logs: 3 scales" in r.stdout
    assert conn.execute("SELECT scale_id, seq, data_1 FROM scale_current_states ORDER BY 1").fetchall() == expected


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_database_not_in_utf8_is_refused_at_start_naming_database_and_encoding(pg_server, encoding, service_factory):
    # issue 10 #3: LATIN1 stored "°C" as "Â°C" in the history (not in the latest state);
    # SQL_ASCII died in the migration with a traceback
    import psycopg

    name = f"enc_{encoding.lower()}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        dsn = pg_server.dsn.replace("dbname=postgres", f"dbname={name}")
        r = subprocess.run([sys.executable, "-m", "ingestor.cli", "migrate", "--dsn", dsn], capture_output=True,
                           text=True, timeout=60)
        want = f"database '{name}' has encoding {encoding}; scale-ingestor stores UTF-8 text and needs a UTF8 database"
        assert r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr, r.stderr
        svc = service_factory("--dsn", dsn, "--writers", "1")
        assert svc.proc.wait(30) == 2
        assert want in svc.output() and "Traceback" not in svc.output()
        with psycopg.connect(dsn) as c:  # nothing was created
            assert c.execute("SELECT to_regclass('weighing_logs')").fetchone()[0] is None
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as c:
            c.execute(f"DROP DATABASE {name} WITH (FORCE)")
